"""Batching transformed samples for the network (the DataLoader's ``collate_fn``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["collate", "share_target_storage"]


def collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack the inputs, keep the targets as a list (their object counts differ).

    Args:
        batch: B pairs ``(x, target)`` as `SSDAugmentation` / `EvalTransform` return them:
            ``x`` float (3, S, S), ``target["boxes"]`` float (n_i, 4) xyxy fractions of
            the image.

    Returns:
        ``x`` float (B, 3, S, S) and the list of the B targets, in order, with the same
        values; each key whose values are all tensors of one dtype and one shape past the
        first dimension (``boxes`` (n_i, 4), ``labels`` (n_i,)) holds views of one tensor
        (`share_target_storage`).

    Raises:
        ValueError: an empty batch, or inputs of different shapes or dtypes (the message
            names the sample and its image id).
    """
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    images: list[Tensor] = []
    targets: list[dict[str, Any]] = []
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ValueError(f"collate: sample {i} is not an (x, target) pair")
        x, target = sample
        if not isinstance(x, Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"collate: sample {i}{_name(target)}: expected a tensor (3, S, S), got {shape}")
        if images and (x.shape != images[0].shape or x.dtype != images[0].dtype):
            raise ValueError(
                f"collate: sample {i}{_name(target)} is {x.dtype} {tuple(x.shape)} but sample 0 is "
                f"{images[0].dtype} {tuple(images[0].shape)}; all inputs of a batch must have one size"
            )
        images.append(x)
        targets.append(target)
    return torch.stack(images), share_target_storage(targets)


def share_target_storage(targets: list[Any]) -> list[Any]:
    """The targets (dicts) with each key's tensors made views of one tensor, where the key's
    values are all tensors of one dtype and device, of the same shape past their first
    dimension: new dicts, the same values.

    A batch from a loader worker reaches the main process as one shared-memory file per
    tensor storage, received over a socket: for batches of 32 images, 65 storages took
    22 ms of the main process, 3 storages 3.6 ms (benchmarks/README.md, "Image loading in
    worker processes").
    """
    if not targets or not all(isinstance(target, dict) for target in targets):
        return targets
    shared = [dict(target) for target in targets]
    for key in set.intersection(*(set(target) for target in targets)):
        values = [target[key] for target in targets]
        if not all(isinstance(value, Tensor) and value.ndim >= 1 for value in values):
            continue
        if len({(value.dtype, value.device, value.shape[1:]) for value in values}) != 1:
            continue
        views = torch.cat(values).split([len(value) for value in values])
        for target, view in zip(shared, views):
            target[key] = view
    return shared


def _name(target: Any) -> str:
    if isinstance(target, dict) and target.get("image_id") is not None:
        return f" (image {target['image_id']!r})"
    return ""
