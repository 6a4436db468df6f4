"""What every dataset reader shares: the parsed record of an image and the Dataset on top.

A reader parses and validates all annotations when it is created and keeps one `Record`
per usable image. ``ds[i]`` then only decodes the image; ``ds.annotation(i)`` does not
even do that (evaluation reads all ground truth this way).

Targets (``ds[i][1]`` and ``ds.annotation(i)``) are dicts of:

- ``"boxes"``: float32 (n, 4) xyxy in pixels of the stored image, continuous and 0-based:
  the top-left pixel covers [0, 1) x [0, 1), so a box spanning pixels 0..9 is (0, 0, 10, 10);
- ``"labels"``: int64 (n,) in 1..C-1 (0 is the background, ``ds.classes[0]``);
- ``"difficult"``: bool (n,) (VOC's difficult flag; COCO's iscrowd);
- ``"image_id"``: str file stem (VOC, YOLO) or int COCO image id;
- ``"size"``: int64 (2,) = (height, width) of the stored image;
- reader-specific per-object extras (VOC: ``"truncated"`` bool (n,)).
"""

from __future__ import annotations

import bisect
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from ..imageio import read_image
from .validation import CLIPPED, InvalidItem, Problems, clip_to_image

__all__ = [
    "BACKGROUND",
    "Record",
    "DetectionDataset",
    "DetectionConcat",
    "Transforms",
    "read_class_names_without_background",
    "read_class_names",
    "make_record",
]

BACKGROUND = "__background__"

# transforms(image uint8 (3, H, W), target) -> (image or network input, target)
Transforms = Callable[[Tensor, dict[str, Any]], tuple[Any, dict[str, Any]]]


@dataclass(slots=True)
class Record:
    """The validated annotation of one image.

    ``boxes`` float32 (n, 4) xyxy continuous pixels, inside the image; ``labels`` int64
    (n,) in 1..C-1; ``difficult`` bool (n,); ``extra`` per-object arrays of length n.
    """

    image_path: Path
    image_id: str | int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def target(self) -> dict[str, Any]:
        """The target dict (fresh tensors: transforms may change them in place)."""
        target: dict[str, Any] = {
            "boxes": torch.tensor(self.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(self.labels, dtype=torch.int64),
            "difficult": torch.tensor(self.difficult, dtype=torch.bool),
            "image_id": self.image_id,
            "size": torch.tensor([self.height, self.width], dtype=torch.int64),
        }
        for key, value in self.extra.items():
            target[key] = torch.from_numpy(value.copy())
        return target


def make_record(
    path: str | os.PathLike,
    image_path: Path,
    image_id: str | int,
    height: int,
    width: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
    problems: Problems,
    names: Sequence[str] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Record:
    """Validate parsed objects and build a `Record`.

    Args:
        path: the annotation file, named in errors.
        boxes: float (n, 4) xyxy continuous pixels as read (before clipping).
        names: optional description of each object for error messages (e.g. "object 2 (dog)").

    Raises:
        InvalidItem: a box is not finite, inverted, empty, or lies entirely outside the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def describe(k: int) -> str:
        return names[k] if names is not None else f"object {k}"

    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if not all(np.isfinite((x1, y1, x2, y2))):
            raise InvalidItem(path, f"{describe(k)}: box coordinates are not finite: {[x1, y1, x2, y2]}")
        if x2 < x1 or y2 < y1:
            raise InvalidItem(path, f"{describe(k)}: inverted box (x1, y1, x2, y2) = {[x1, y1, x2, y2]}")
        if x2 == x1 or y2 == y1:
            raise InvalidItem(path, f"{describe(k)}: empty box (x1, y1, x2, y2) = {[x1, y1, x2, y2]}")
    clipped, changed = clip_to_image(boxes, height, width)
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise InvalidItem(
            path, f"{describe(k)}: box {boxes[k].tolist()} lies outside the {width}x{height} image"
        )
    problems.warn(CLIPPED, changed)
    return Record(
        image_path=image_path,
        image_id=image_id,
        height=int(height),
        width=int(width),
        boxes=clipped.astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        difficult=np.asarray(difficult, dtype=bool).reshape(-1),
        extra=extra or {},
    )


def read_class_names_without_background(path: str | os.PathLike) -> list[str]:
    """Class names from a text file: one per line, blank lines ignored, no background.

    A first line "__background__" (or "background") is dropped, so a list written with
    its background entry reads back the same.

    Raises:
        ValueError: missing or non-UTF-8 file, no names, or a name given twice; names the file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the class list ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: the class list is not UTF-8 text ({error})") from None
    names = [line.strip() for line in lines if line.strip()]
    if names and names[0] in (BACKGROUND, "background"):
        names = names[1:]
    if not names:
        raise ValueError(f"{path}: the class list is empty")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"{path}: class names listed more than once: {repeated}")
    return names


# The name this function had before `singleshot convert`'s reader (which adds the background)
# was told apart from it; kept for existing imports.
read_class_names = read_class_names_without_background


class DetectionDataset(Dataset):
    """A detection dataset over validated `Record`s.

    ``ds[i]`` -> (image uint8 (3, H, W) RGB, target) passed through ``transforms``; see the
    module docstring for the target. Subclasses parse their format and call ``__init__``.

    Attributes:
        classes: names, index 0 = "__background__".
        skipped: (path, reason) of the items left out with ``skip_invalid=True``.
        warnings: Counter of fixed-up problems (e.g. boxes clipped to the image).
        records: the parsed annotations, one per image.
        difficult_name: what a target's ``difficult`` flag marks in this format, for reports:
            "difficult" (VOC's flag; YOLO has none), "crowd" for COCO's ``iscrowd`` regions.
    """

    difficult_name: str = "difficult"

    def __init__(
        self,
        records: list[Record],
        classes: Sequence[str],
        transforms: Transforms | None = None,
        problems: Problems | None = None,
        source: str | os.PathLike = "",
    ) -> None:
        self.records = records
        self.classes = [BACKGROUND, *classes]
        self.transforms = transforms
        problems = problems or Problems(skip_invalid=False)
        self.skipped: list[tuple[str, str]] = problems.skipped
        self.warnings: Counter[str] = problems.warnings
        self.source = str(source)

    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        """Path of image ``index`` (no decoding)."""
        return self.records[index].image_path

    def annotation(self, index: int) -> dict[str, Any]:
        """Target of image ``index`` without decoding the image (not transformed)."""
        return self.records[index].target()

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        record = self.records[index]
        image = read_image(record.image_path)
        if image.shape[1:] != (record.height, record.width):
            raise ValueError(
                f"{record.image_path}: decoded size {image.shape[2]}x{image.shape[1]} differs from the "
                f"{record.width}x{record.height} read when the dataset was opened"
            )
        target = record.target()
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}, {len(self)} images, {self.num_classes - 1} classes, "
            f"{len(self.skipped)} skipped)"
        )


class DetectionConcat(ConcatDataset):
    """Several detection datasets with the same classes read as one (e.g. VOC07+12 trainval).

    Offers what a single dataset does: ``classes``, ``skipped``, ``warnings``,
    ``annotation(i)``, ``image_path(i)``.
    """

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        first = list(datasets[0].classes)
        for dataset in datasets[1:]:
            if list(dataset.classes) != first:
                raise ValueError(
                    f"cannot concatenate datasets with different classes: {first} vs {list(dataset.classes)}"
                )
        self.classes = first
        self.skipped = [item for dataset in datasets for item in dataset.skipped]
        self.warnings: Counter[str] = sum((Counter(d.warnings) for d in datasets), Counter())

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        if index < 0:
            if -index > len(self):
                raise IndexError(f"index {index} out of range for {len(self)} images")
            index += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        if part >= len(self.datasets):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part], index - start  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def annotation(self, index: int) -> dict[str, Any]:
        dataset, local = self._locate(index)
        return dataset.annotation(local)

    def image_path(self, index: int) -> Path:
        dataset, local = self._locate(index)
        return dataset.image_path(local)
