"""Opening a dataset folder by its layout: `open_dataset`, `detect_format`, `list_splits`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .coco import COCODataset
from .common import DetectionDataset, Transforms, read_class_names
from .voc import VOC_CLASSES, VOCDataset
from .yolo import YOLODataset

__all__ = ["FORMATS", "open_dataset", "detect_format", "list_splits", "coco_paths"]

FORMATS = ("voc", "coco", "yolo")


def _is_voc(path: Path) -> bool:
    return (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir()


def _is_coco(path: Path) -> bool:
    return any((path / "annotations").glob("instances_*.json"))


def _is_yolo(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "labels").is_dir()


def detect_format(path: str | os.PathLike) -> str:
    """The format of a dataset folder, from its layout, checked in this order:

    - "voc": ``Annotations/`` and ``ImageSets/Main/`` (a VOC20XX folder);
    - "coco": ``annotations/instances_*.json``;
    - "yolo": ``images/`` and ``labels/``.

    Raises:
        ValueError: the folder matches none of them (names the folder).
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    for name, test in (("voc", _is_voc), ("coco", _is_coco), ("yolo", _is_yolo)):
        if test(path):
            return name
    raise ValueError(
        f"{path}: unknown dataset layout (expected VOC: Annotations/ + ImageSets/Main/; "
        "COCO: annotations/instances_<split>.json; YOLO: images/ + labels/)"
    )


def _voc_classes(path: Path) -> list[str]:
    names = path / "classes.txt"
    return read_class_names(names) if names.is_file() else list(VOC_CLASSES)


def list_splits(path: str | os.PathLike, format: str | None = None) -> list[str]:
    """Split names available in a dataset folder, sorted.

    VOC: the ImageSets/Main lists other than the per-class ``<class>_<split>.txt`` ones;
    COCO: the ``<split>`` of each ``annotations/instances_<split>.json``;
    YOLO: the sub-folders of ``images/``.
    """
    path = Path(path)
    format = format or detect_format(path)
    if format == "voc":
        classes = set(_voc_classes(path))
        splits = []
        for file in (path / "ImageSets" / "Main").glob("*.txt"):
            head, _, tail = file.stem.partition("_")
            if not (tail and head in classes):
                splits.append(file.stem)
        return sorted(splits)
    if format == "coco":
        return sorted(
            p.stem.removeprefix("instances_") for p in (path / "annotations").glob("instances_*.json")
        )
    if format == "yolo":
        return sorted(p.name for p in (path / "images").iterdir() if p.is_dir())
    raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")


def coco_paths(path: Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a COCO split.

    The annotation file is ``annotations/instances_<split>.json``; images are in
    ``images/<split>/`` (singleshot's layout) or ``<split>/`` (COCO's own, e.g. train2017/).
    """
    annotation = path / "annotations" / f"instances_{split}.json"
    for image_dir in (path / "images" / split, path / split):
        if image_dir.is_dir():
            return image_dir, annotation
    return path / "images" / split, annotation


def open_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "train",
    transforms: Transforms | None = None,
    skip_invalid: bool = False,
    **options: Any,
) -> DetectionDataset:
    """Open a dataset folder written by ``singleshot data synth`` or in a standard layout.

    Args:
        path: the dataset folder: a VOC20XX folder (a ``classes.txt`` next to
            ``Annotations/`` gives the class names, one per line; otherwise the 20 VOC
            classes), a COCO folder (``annotations/instances_<split>.json`` with images in
            ``images/<split>/`` or ``<split>/``), or a YOLO folder (``images/<split>/``,
            ``labels/<split>/``, ``classes.txt``).
        format: "voc", "coco", "yolo", or None to detect it from the layout (`detect_format`:
            VOC if ``Annotations/`` and ``ImageSets/Main/`` exist, else COCO if an
            ``annotations/instances_*.json`` exists, else YOLO if ``images/`` and ``labels/`` exist).
        split: VOC: the image set (ImageSets/Main/<split>.txt); COCO: instances_<split>.json;
            YOLO: the images/<split> folder.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid items (in ``ds.skipped``) instead of raising.
        options: passed on to the reader (e.g. ``verify_images``, ``progress``,
            VOC ``keep_difficult``).

    Raises:
        ValueError: unknown layout or format, or a split that does not exist (the message
            lists the splits found).
    """
    path = Path(path)
    format = format or detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    available = list_splits(path, format)
    if split not in available:
        raise ValueError(
            f"{path}: no split {split!r} in this {format} dataset (found: {', '.join(available)})"
        )
    common = dict(transforms=transforms, skip_invalid=skip_invalid, **options)
    if format == "voc":
        return VOCDataset(path, image_set=split, classes=_voc_classes(path), **common)
    if format == "coco":
        image_dir, annotation = coco_paths(path, split)
        return COCODataset(image_dir, annotation, **common)
    return YOLODataset(path, split=split, **common)
