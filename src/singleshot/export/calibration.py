"""Calibration images for static int8 quantisation, fed through the model's own preprocessing.

`calibration_images` picks the images: from a dataset root (any layout `singleshot.data`
reads: VOC, COCO, YOLO and the exports of labelling tools; its ``train`` split unless told
otherwise) or from a plain folder of image files (searched recursively). `ImageBatches`
hands them to ONNX Runtime's calibrator the way a deployed model sees them: resized to
S x S, minus the mean, divided by the std (`singleshot.transforms.preprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..imageio import IMAGE_SUFFIXES, read_image
from ..transforms import preprocess

__all__ = ["CalibrationImages", "calibration_images", "ImageBatches", "evenly_spaced"]


def evenly_spaced(total: int, count: int) -> list[int]:
    """``min(count, total)`` indices spread evenly over ``range(total)``, first and in order.

    Calibration sees the whole set, not its first files (which are often one scene or class).
    """
    if count < 1:
        raise ValueError(f"the number of calibration images must be >= 1, got {count}")
    take = min(count, total)
    return [i * total // take for i in range(take)]


class CalibrationImages(Sequence[Tensor]):
    """A lazy sequence of uint8 (3, H, W) RGB images: ``images[i]`` decodes one when asked.

    Args:
        read: index -> image.
        names: one name per image (a file path or "<dataset> #index"), for messages.
        source: where the images come from (a folder or a dataset and its split).
    """

    def __init__(self, read: Callable[[int], Tensor], names: Sequence[str], source: str) -> None:
        self._read = read
        self.names = list(names)
        self.source = source

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        return self._read(index)


def calibration_images(
    data: str | os.PathLike, count: int = 100, split: str = "train", format: str | None = None
) -> CalibrationImages:
    """Up to ``count`` images of ``data``, evenly spread over it.

    Args:
        data: a dataset root (its layout detected as `singleshot.data.open_dataset` does;
            the images of ``split`` are used, their annotations ignored), or any other
            folder: every file with an image suffix below it (recursively, sorted by path).
        count: images to use (all when fewer exist).
        split: the dataset split (dataset roots only).
        format: "voc", "coco", "yolo" or None (detected), for dataset roots.

    Raises:
        ValueError: ``data`` is not a folder, holds no images, or lacks ``split``.
    """
    from ..data import open_dataset
    from ..data.layouts import detect_layout

    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"{root}: calibration data must be a folder of images or a dataset root")
    try:
        detect_layout(root, format)
    except ValueError:
        if format is not None:
            raise
        return _image_folder(root, count)
    dataset = open_dataset(root, format=format, split=split)
    if len(dataset) == 0:
        raise ValueError(f"{root}: split {split!r} has no images to calibrate with")
    picked = evenly_spaced(len(dataset), count)
    return CalibrationImages(
        lambda i: dataset[picked[i]][0], [f"{root} ({split}) #{i}" for i in picked], f"{root} ({split})"
    )


def _image_folder(root: Path, count: int) -> CalibrationImages:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"{root}: no images to calibrate with (looked for {', '.join(IMAGE_SUFFIXES)} files in it "
            "and its sub-folders, and for a dataset layout)"
        )
    picked = [files[i] for i in evenly_spaced(len(files), count)]
    return CalibrationImages(lambda i: read_image(picked[i]), [str(p) for p in picked], str(root))


class ImageBatches:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over images: ``get_next()`` returns
    ``{input_name: float32 (B, 3, S, S)}`` batches, preprocessed as the model's input, then
    None; ``rewind()`` starts again.

    Args:
        images: uint8 (3, H, W) RGB images (any sizes).
        image_size, image_mean, image_std: the model's input convention (S, RGB 0-255 mean, std).
        input_name: the graph's input.
        batch_size: images per batch.
        progress: a tqdm bar over the images (None for none).
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        image_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float] | None,
        input_name: str = "images",
        batch_size: int = 8,
        progress: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images
        self.image_size = int(image_size)
        self.image_mean = tuple(image_mean)
        self.image_std = None if image_std is None else tuple(image_std)
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            return None
        stop = min(self._next + self.batch_size, len(self.images))
        batch = [self.images[i] for i in range(self._next, stop)]
        x = preprocess(batch, self.image_size, self.image_mean, std=self.image_std)
        if self.progress is not None:
            self.progress.update(stop - self._next)
        self._next = stop
        return {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self) -> ImageBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch
