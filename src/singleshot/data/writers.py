"""Writing detection samples to disk in VOC, COCO or YOLO layout.

Each writer takes samples one at a time (``add``) and finishes the split files on
``close``, so a large set never sits in memory. Boxes come in singleshot's form, float
(n, 4) xyxy continuous 0-based pixels, and are written in the file format's own
convention, so that the readers give them back unchanged:

- VOC: 1-based inclusive indices, (x1 + 1, y1 + 1, x2, y2); integers when the box is
  pixel-aligned;
- COCO: [x1, y1, x2 - x1, y2 - y1];
- YOLO: class index, then cx, cy, w, h as fractions with 8 decimals.

Layouts (``OUT`` = the output folder, one folder for all splits):

- voc: ``OUT/Annotations/*.xml``, ``OUT/JPEGImages/*.jpg``, ``OUT/ImageSets/Main/<split>.txt``,
  ``OUT/classes.txt``;
- coco: ``OUT/images/<split>/*.jpg``, ``OUT/annotations/instances_<split>.json``;
- yolo: ``OUT/images/<split>/*.jpg``, ``OUT/labels/<split>/*.txt``, ``OUT/classes.txt``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from ..fileio import naming_failed_writes

__all__ = ["DatasetWriter", "VOCWriter", "COCOWriter", "YOLOWriter", "make_writer", "voc_xml", "OUTPUTS"]

# What each format writes at the top of OUT (used to clear an earlier run).
OUTPUTS = {
    "voc": ("Annotations", "JPEGImages", "ImageSets", "classes.txt"),
    "coco": ("images", "annotations"),
    "yolo": ("images", "labels", "classes.txt"),
}


def _number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def voc_xml(
    filename: str,
    height: int,
    width: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    difficult: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    folder: str = "",
) -> str:
    """A VOC annotation document.

    Args:
        boxes: float (n, 4) xyxy continuous 0-based pixels (written as 1-based inclusive).
        labels: int (n,) in 1..len(classes); ``classes`` excludes the background.
    """
    n = len(labels)
    difficult = np.zeros(n, dtype=bool) if difficult is None else difficult
    truncated = np.zeros(n, dtype=bool) if truncated is None else truncated
    lines = [
        "<annotation>",
        *([f"  <folder>{escape(folder)}</folder>"] if folder else []),
        f"  <filename>{escape(filename)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for box, label, diff, trunc in zip(np.asarray(boxes, dtype=np.float64), labels, difficult, truncated):
        xmin, ymin, xmax, ymax = (_number(v) for v in (box[0] + 1, box[1] + 1, box[2], box[3]))
        lines += [
            "  <object>",
            f"    <name>{escape(classes[int(label) - 1])}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{int(bool(trunc))}</truncated>",
            f"    <difficult>{int(bool(diff))}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _save_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    """Save uint8 (H, W, 3) RGB as JPEG (same pixels and quality -> same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_failed_writes(path, remove_partial=True):
        Image.fromarray(image, "RGB").save(path, format="JPEG", quality=quality)


def _write_text(path: Path, text: str) -> None:
    with naming_failed_writes(path, remove_partial=True):
        path.write_text(text, encoding="utf-8")


class DatasetWriter:
    """Base writer: ``add`` samples of named splits, then ``close``.

    Args:
        out: the output folder.
        classes: object class names without background (label k = classes[k - 1]).
        quality: JPEG quality of the images.
    """

    format = ""

    def __init__(self, out: str | os.PathLike, classes: Sequence[str], quality: int = 90) -> None:
        self.out = Path(out)
        self.classes = list(classes)
        self.quality = quality
        self.out.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        split: str,
        name: str,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        difficult: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
    ) -> None:
        """Write one sample: ``image`` uint8 (H, W, 3) RGB, ``boxes`` float (n, 4) xyxy
        continuous pixels, ``labels`` int (n,) in 1..K; ``name`` is the file stem."""
        raise NotImplementedError

    def declare_split(self, split: str) -> None:
        """Make ``split`` exist even if no sample is added to it (an empty list / JSON / folder)."""

    def close(self) -> None:
        """Write what depends on the whole split (lists, JSON)."""

    def _write_classes(self) -> None:
        _write_text(self.out / "classes.txt", "".join(f"{c}\n" for c in self.classes))


class VOCWriter(DatasetWriter):
    format = "voc"

    def __init__(self, out: str | os.PathLike, classes: Sequence[str], quality: int = 90) -> None:
        super().__init__(out, classes, quality)
        self.ids: dict[str, list[str]] = defaultdict(list)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)

    def add(
        self,
        split: str,
        name: str,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        difficult: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
    ) -> None:
        _save_jpeg(image, self.out / "JPEGImages" / f"{name}.jpg", self.quality)
        document = voc_xml(
            f"{name}.jpg", image.shape[0], image.shape[1], boxes, labels, self.classes, difficult, truncated
        )
        _write_text(self.out / "Annotations" / f"{name}.xml", document)
        self.ids[split].append(name)

    def declare_split(self, split: str) -> None:
        self.ids.setdefault(split, [])

    def close(self) -> None:
        for split, ids in self.ids.items():
            text = "".join(f"{i}\n" for i in ids)
            _write_text(self.out / "ImageSets" / "Main" / f"{split}.txt", text)
        self._write_classes()


class COCOWriter(DatasetWriter):
    format = "coco"

    def __init__(self, out: str | os.PathLike, classes: Sequence[str], quality: int = 90) -> None:
        super().__init__(out, classes, quality)
        self.images: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.annotations: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(
        self,
        split: str,
        name: str,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        difficult: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
    ) -> None:
        _save_jpeg(image, self.out / "images" / split / f"{name}.jpg", self.quality)
        image_id = len(self.images[split]) + 1
        self.images[split].append(
            {"id": image_id, "file_name": f"{name}.jpg", "height": image.shape[0], "width": image.shape[1]}
        )
        crowd = np.zeros(len(labels), dtype=bool) if difficult is None else difficult
        for box, label, is_crowd in zip(np.asarray(boxes, dtype=np.float64), labels, crowd):
            w, h = box[2] - box[0], box[3] - box[1]
            self.annotations[split].append(
                {
                    "id": len(self.annotations[split]) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [_number(box[0]), _number(box[1]), _number(w), _number(h)],
                    "area": _number(w * h),
                    "iscrowd": int(bool(is_crowd)),
                }
            )

    def declare_split(self, split: str) -> None:
        self.images.setdefault(split, [])

    def close(self) -> None:
        categories = [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(self.classes)
        ]
        (self.out / "annotations").mkdir(parents=True, exist_ok=True)
        for split, images in self.images.items():
            document = {
                "info": {"description": f"singleshot dataset, split {split}"},
                "images": images,
                "annotations": self.annotations[split],
                "categories": categories,
            }
            path = self.out / "annotations" / f"instances_{split}.json"
            _write_text(path, json.dumps(document, separators=(",", ":")))


class YOLOWriter(DatasetWriter):
    format = "yolo"

    def add(
        self,
        split: str,
        name: str,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        difficult: np.ndarray | None = None,
        truncated: np.ndarray | None = None,
    ) -> None:
        _save_jpeg(image, self.out / "images" / split / f"{name}.jpg", self.quality)
        height, width = image.shape[:2]
        lines = []
        for box, label in zip(np.asarray(boxes, dtype=np.float64), labels):
            cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
            w, h = (box[2] - box[0]) / width, (box[3] - box[1]) / height
            lines.append(f"{int(label) - 1} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}\n")
        path = self.out / "labels" / split / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_text(path, "".join(lines))

    def declare_split(self, split: str) -> None:
        for kind in ("images", "labels"):
            (self.out / kind / split).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._write_classes()


def make_writer(
    format: str, out: str | os.PathLike, classes: Sequence[str], quality: int = 90
) -> DatasetWriter:
    """The writer of a format ("voc", "coco" or "yolo")."""
    writers = {"voc": VOCWriter, "coco": COCOWriter, "yolo": YOLOWriter}
    if format not in writers:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {tuple(writers)}")
    return writers[format](out, classes, quality)
