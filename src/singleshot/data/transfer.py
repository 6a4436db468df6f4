"""Samples from data-loader worker processes in few tensors.

Every tensor a DataLoader worker returns reaches the main process as a shared-memory file
of its own: the worker copies the tensor into it, and the main process receives the file's
descriptor over a socket and maps it. That costs about half a millisecond per tensor in the
main process, whatever its size (benchmarks/README.md, "Image loading in worker
processes"): a batch of eight images with their boxes, labels and difficult flags is 32
tensors, longer than an int8 model takes to detect in the eight images.

`pack_samples`, the workers' ``collate_fn``, joins the batch's images into one tensor and
turns the targets' tensors into numpy arrays, which travel pickled inside the batch;
`unpack_samples`, in the main process, gives back the samples: the images as views of that
one tensor, the targets' arrays as tensors again (sharing the arrays' memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["PackedSamples", "pack_samples", "unpack_samples"]


class _Array:
    """A target's tensor on its way out of a worker, as a numpy array (pickled by value)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class PackedSamples(NamedTuple):
    """A batch of (image, target) samples as `pack_samples` sends it.

    Attributes:
        pixels: every image's values, flattened, one image after another (1-D); None when
            the images are not all tensors of one dtype (they then travel as they are).
        images: each image's shape when ``pixels`` holds them, else the images.
        targets: the targets, their CPU tensors held as numpy arrays.
    """

    pixels: Tensor | None
    images: list[Any]
    targets: list[Any]


def _convertible(value: Any) -> bool:
    """A dense CPU tensor numpy can hold (numpy has no bfloat16; a tensor needing gradients,
    or a sparse one, stays one)."""
    return (
        isinstance(value, Tensor)
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and not value.requires_grad
        and value.dtype not in (torch.bfloat16, torch.complex32)
    )


def _targets_out(target: Any) -> Any:
    if not isinstance(target, dict):
        return target
    return {key: _Array(value.numpy()) if _convertible(value) else value for key, value in target.items()}


def _targets_in(target: Any) -> Any:
    if not isinstance(target, dict):
        return target
    return {key: torch.from_numpy(v.array) if isinstance(v, _Array) else v for key, v in target.items()}


def pack_samples(batch: Sequence[tuple[Any, Any]]) -> PackedSamples:
    """A worker's batch of (image, target) pairs -> one `PackedSamples` (see the module docstring)."""
    images = [image for image, _ in batch]
    targets = [_targets_out(target) for _, target in batch]
    tensors = all(isinstance(image, Tensor) and image.device.type == "cpu" for image in images)
    if images and tensors and len({image.dtype for image in images}) == 1:
        pixels = torch.cat([image.reshape(-1) for image in images])
        return PackedSamples(pixels, [tuple(image.shape) for image in images], targets)
    return PackedSamples(None, images, targets)


def unpack_samples(packed: PackedSamples) -> list[tuple[Any, Any]]:
    """`pack_samples`' output -> the batch's (image, target) pairs, in order, equal to the originals."""
    targets = [_targets_in(target) for target in packed.targets]
    if packed.pixels is None:
        return list(zip(packed.images, targets))
    images, start = [], 0
    for shape in packed.images:
        count = math.prod(shape)
        images.append(packed.pixels[start : start + count].view(shape))
        start += count
    return list(zip(images, targets))
