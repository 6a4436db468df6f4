"""Opening a dataset: `open_dataset` (a folder, its layout detected), `open_coco` (explicit files).

The layouts themselves (VOC, COCO, YOLO and the exports of Roboflow, Ultralytics, CVAT and
Label Studio) are described in `singleshot.data.layouts`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .coco import COCODataset
from .common import DetectionDataset, Transforms
from .layouts import DEFAULT_LAYOUTS, Detected, Layout, coco_paths, detect_layout

__all__ = [
    "FORMATS",
    "open_dataset",
    "open_coco",
    "detect_format",
    "describe_layout",
    "list_splits",
    "coco_paths",
]

FORMATS = ("voc", "coco", "yolo")


def detect_format(path: str | os.PathLike) -> str:
    """The reader format ("voc", "coco" or "yolo") of a dataset folder, from its layout
    (`singleshot.data.layouts.detect_layout`; singleshot's own layouts are found as before:
    ``Annotations/`` + ``ImageSets/Main/``, then ``annotations/instances_*.json``, then
    ``images/`` + ``labels/``).

    Raises:
        ValueError: not a folder, or an unknown layout (the message lists each layout's markers).
    """
    return detect_layout(path).layout.format


def describe_layout(path: str | os.PathLike, format: str | None = None) -> str:
    """The layout found in a folder and its marker: ``"Roboflow COCO (train/_annotations.coco.json)"``."""
    return _detect(Path(path), format).describe()


def _detect(path: Path, format: str | None) -> Detected:
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
    if format is None:
        return detect_layout(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    try:
        return detect_layout(path, format)
    except ValueError:  # a format given for a folder without its markers: singleshot's layout
        return Detected(DEFAULT_LAYOUTS[format], "format given")


def _layout(path: Path, format: str | None) -> Layout:
    return _detect(path, format).layout


def list_splits(path: str | os.PathLike, format: str | None = None) -> list[str]:
    """Split names available in a dataset folder, sorted.

    VOC: the ImageSets/Main lists other than the per-class ``<class>_<split>.txt`` ones;
    COCO: the ``<split>`` of each ``annotations/instances_<split>.json``;
    YOLO: the sub-folders of ``images/``; other layouts: see `singleshot.data.layouts`
    (``"all"`` for the exports without splits).
    """
    path = Path(path)
    return _layout(path, format).splits(path)


def open_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "train",
    transforms: Transforms | None = None,
    skip_invalid: bool = False,
    **options: Any,
) -> DetectionDataset:
    """Open a dataset folder written by ``singleshot data synth`` or in a known layout.

    Args:
        path: the dataset folder: a VOC20XX folder (a ``classes.txt`` next to
            ``Annotations/`` gives the class names, one per line; otherwise the 20 VOC
            classes), a COCO folder (``annotations/instances_<split>.json`` with images in
            ``images/<split>/`` or ``<split>/``), a YOLO folder (``images/<split>/``,
            ``labels/<split>/``, ``classes.txt``), or the export of Roboflow, Ultralytics
            (``data.yaml``), CVAT or Label Studio (`singleshot.data.layouts`).
        format: "voc", "coco", "yolo", or None to detect it from the layout (`detect_format`).
            Given, only the layouts of that format are tried, then singleshot's own.
        split: VOC: the image set (ImageSets/Main/<split>.txt); COCO: instances_<split>.json;
            YOLO: the images/<split> folder; others: see `list_splits`.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid items (in ``ds.skipped``) instead of raising.
        options: passed on to the reader (e.g. ``verify_images``, ``progress``,
            VOC ``keep_difficult``).

    Raises:
        ValueError: unknown layout or format, or a split that does not exist (the message
            lists the splits found).
    """
    path = Path(path)
    layout = _layout(path, format)
    available = layout.splits(path)
    if split not in available:
        found = ", ".join(available) or "none"
        raise ValueError(
            f"{path}: no split {split!r} in this {layout.format} dataset (found: {found}) "
            f"in the {layout.name} layout"
        )
    return layout.open(path, split, transforms=transforms, skip_invalid=skip_invalid, **options)


def open_coco(
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    transforms: Transforms | None = None,
    skip_invalid: bool = False,
    **options: Any,
) -> COCODataset:
    """A COCO dataset given by its files, in no particular layout (``--images DIR
    --annotations FILE`` on the command line)::

        open_coco("photos/", "labels/instances.json")

    Args:
        images: the folder the JSON's ``file_name`` entries are relative to.
        annotations: the COCO instances JSON.
        Other arguments: as `open_dataset`.

    Raises:
        ValueError: the folder or the file does not exist (named), or the JSON is invalid.
    """
    images, annotations = Path(images), Path(annotations)
    if not images.is_dir():
        raise ValueError(f"{images}: no such image folder (--images)")
    if not annotations.is_file():
        raise ValueError(f"{annotations}: no such annotation file (--annotations)")
    return COCODataset(images, annotations, transforms=transforms, skip_invalid=skip_invalid, **options)
