"""Pascal VOC: one ``VOC20XX`` folder, and the VOC2007+2012 trainval union.

Box convention. VOC XML stores 1-based, inclusive pixel indices: a box over the image's
first ten columns is ``xmin=1, xmax=10``. singleshot uses continuous 0-based corners, so
that box becomes x1 = xmin - 1 = 0, x2 = xmax = 10 (likewise for y). The continuous box
covers exactly the pixels of the inclusive one, so the devkit's "+1" widths are already
in it and `singleshot.evaluation.evaluate_voc` measures plain IoU on these boxes, giving
the devkit's numbers. Float coordinates (written by some tools) are converted the same way.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..imageio import IMAGE_SUFFIXES
from .common import DetectionConcat, DetectionDataset, Record, Transforms, make_record
from .validation import SIZE_MISMATCH, InvalidItem, Problems, check_image, progress_bar

__all__ = ["VOC_CLASSES", "VOCDataset", "voc_trainval_07_12", "parse_voc_xml", "read_image_set"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def read_image_set(path: Path) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<set>.txt`` (first token of each non-empty line).

    Raises:
        ValueError: the file cannot be read or is not UTF-8 text; names the file.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the image set ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: the image set is not UTF-8 text ({error})") from None
    return [line.split()[0] for line in lines if line.strip()]


def _text(element: ET.Element, tag: str, path: Path, what: str) -> str | None:
    """The text of ``element``'s only child ``tag`` (None when absent); a repeated tag is invalid."""
    found = element.findall(tag)
    if len(found) > 1:
        raise InvalidItem(path, f"{what}: <{tag}> given {len(found)} times")
    return (found[0].text or "") if found else None


def _number(element: ET.Element, tag: str, path: Path, what: str) -> float:
    text = _text(element, tag, path, what)
    if text is None or not text.strip():
        raise InvalidItem(path, f"{what}: missing <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise InvalidItem(path, f"{what}: <{tag}> is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise InvalidItem(path, f"{what}: <{tag}> is not a finite number: {text.strip()!r}")
    return value


def _flag(element: ET.Element, tag: str, path: Path, what: str) -> bool:
    text = _text(element, tag, path, what)
    if text is None or not text.strip():
        return False  # VOC2012 test and many exports leave the tag out
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise InvalidItem(path, f"{what}: <{tag}> is not 0 or 1: {text.strip()!r}")
    return bool(value)


def parse_voc_xml(path: Path, class_to_label: dict[str, int]) -> dict:
    """Parse one VOC annotation file (no validation of the boxes against the image).

    Returns:
        {"filename": str or None, "size": (height, width) or None, "boxes": float64 (n, 4)
        xyxy continuous 0-based pixels, "labels": int64 (n,), "difficult": bool (n,),
        "truncated": bool (n,), "names": list of "object k (class)"}.

    Raises:
        InvalidItem: missing or malformed file, unknown class, missing, repeated, non-numeric
            or non-finite coordinate or size, a ``<difficult>`` / ``<truncated>`` other than
            0 or 1, inverted box (xmax < xmin or ymax < ymin).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InvalidItem(path, "annotation file not found") from None
    except ET.ParseError as error:
        raise InvalidItem(path, f"malformed XML ({error})") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL character in the path
        raise InvalidItem(
            path, f"cannot read the annotation ({getattr(error, 'strerror', None) or error})"
        ) from None
    size = None
    size_element = root.find("size")
    if size_element is not None:  # a zero or negative size (some exporters write 0) counts as none
        width = _number(size_element, "width", path, "<size>")
        height = _number(size_element, "height", path, "<size>")
        if width > 0 and height > 0:
            size = (int(height), int(width))
    boxes, labels, difficult, truncated, names = [], [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = (_text(obj, "name", path, f"object {k}") or "").strip()
        what = f"object {k} ({name})" if name else f"object {k}"
        if not name:
            raise InvalidItem(path, f"{what}: missing <name>")
        if name not in class_to_label:
            known = ", ".join(list(class_to_label)[:25])
            raise InvalidItem(path, f"{what}: unknown class {name!r} (known: {known})")
        boxes_found = obj.findall("bndbox")
        if len(boxes_found) != 1:
            raise InvalidItem(path, f"{what}: {len(boxes_found) or 'no'} <bndbox> (expected one)")
        box = boxes_found[0]
        xmin, ymin, xmax, ymax = (_number(box, tag, path, what) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise InvalidItem(path, f"{what}: inverted box xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax}")
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(class_to_label[name])
        difficult.append(_flag(obj, "difficult", path, what))
        truncated.append(_flag(obj, "truncated", path, what))
        names.append(what)
    return {
        "filename": (root.findtext("filename") or "").strip() or None,
        "size": size,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
        "names": names,
    }


def _find_image(image_dir: Path, image_id: str, filename: str | None) -> Path:
    default = image_dir / f"{image_id}.jpg"
    if default.is_file():
        return default
    if filename and (image_dir / filename).is_file():
        return image_dir / filename
    for suffix in [*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES)]:
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return default


class VOCDataset(DetectionDataset):
    """One Pascal VOC folder (``VOC2007``, ``VOC2012`` or any folder in that layout).

    Layout: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg`` (another image
    suffix, or the XML's ``<filename>``, is accepted when the .jpg is absent),
    ``root/ImageSets/Main/<image_set>.txt`` listing the ids. Without ImageSets (Label
    Studio's export: ``Annotations/`` + ``images/``), ``image_set=None`` takes every
    ``Annotations/*.xml`` in name order and ``image_dir="images"`` names the image folder.

    Boxes are continuous 0-based xyxy pixels: (xmin - 1, ymin - 1, xmax, ymax) of the XML's
    1-based inclusive indices (see the module docstring); boxes reaching outside the image
    are clipped to it and counted in ``warnings``. A missing ``<difficult>`` or
    ``<truncated>`` tag means 0. Targets also carry ``"truncated"`` bool (n,).
    Images are read in stored pixel order: EXIF orientation is not applied.

    Args:
        root: the VOC20XX folder.
        image_set: name of the list in ImageSets/Main ("train", "val", "trainval", "test");
            None = every annotation file in Annotations/, sorted by name.
        classes: object class names without background, in label order (label k =
            classes[k - 1]); None = the 20 VOC classes in the standard order.
        keep_difficult: keep objects marked difficult (they are needed for evaluation,
            where they are neither counted nor penalised); False drops them.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid items (listed in ``skipped``) instead of raising.
        verify_images: "quick", "full" or "none" (see `singleshot.data.validation.check_image`).
        progress: progress bar while parsing; None = only for 1000 images or more.
        image_dir: the image folder under ``root`` (default JPEGImages).

    Raises:
        ValueError: naming the file and the reason, for a missing image set, and (unless
            ``skip_invalid``) for a malformed XML, an unknown class, an inverted or empty box,
            a box outside the image, a missing or corrupt image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_set: str | None = "trainval",
        classes: Sequence[str] | None = None,
        keep_difficult: bool = True,
        transforms: Transforms | None = None,
        skip_invalid: bool = False,
        verify_images: str = "quick",
        progress: bool | None = None,
        image_dir: str = "JPEGImages",
    ) -> None:
        self.root = Path(root)
        self.image_set = image_set
        self.keep_difficult = keep_difficult
        self.image_dir = self.root / image_dir
        names = list(VOC_CLASSES if classes is None else classes)
        if len(set(names)) != len(names):
            raise ValueError(f"classes contain duplicates: {names}")
        if image_set is None:
            set_file = self.root / "Annotations"
            ids = sorted(p.stem for p in set_file.glob("*.xml"))
        else:
            set_file = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
            if not set_file.is_file():
                raise ValueError(f"{set_file}: image set {image_set!r} not found")
            ids = read_image_set(set_file)
        problems = Problems(skip_invalid)
        class_to_label = {name: k + 1 for k, name in enumerate(names)}
        records = []
        for image_id in progress_bar(
            ids, len(ids), f"reading {self.root.name}/{image_set or 'all'}", progress
        ):
            try:
                if image_id in (".", "..") or any(c in image_id for c in "/\\\0"):
                    raise InvalidItem(
                        set_file, f"image id {image_id!r} is not a file name (Annotations/<id>.xml)"
                    )
                records.append(self._load(image_id, class_to_label, problems, verify_images))
            except InvalidItem as error:
                problems.invalid(error)
        super().__init__(records, names, transforms, problems, source=set_file)
        problems.emit_warnings(set_file)

    def _load(self, image_id: str, class_to_label: dict[str, int], problems: Problems, verify: str) -> Record:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        parsed = parse_voc_xml(xml_path, class_to_label)
        image_path = _find_image(self.image_dir, image_id, parsed["filename"])
        stored = check_image(image_path, verify)
        if stored is None:
            if parsed["size"] is None:
                raise InvalidItem(xml_path, "no <size> in the annotation and verify_images='none'")
            stored = parsed["size"]
        elif parsed["size"] is not None and parsed["size"] != stored:
            problems.warn(SIZE_MISMATCH)
        keep = np.ones(len(parsed["labels"]), dtype=bool)
        if not self.keep_difficult:
            keep = ~parsed["difficult"]
        return make_record(
            xml_path,
            image_path,
            image_id,
            stored[0],
            stored[1],
            parsed["boxes"][keep],
            parsed["labels"][keep],
            parsed["difficult"][keep],
            problems,
            names=[n for n, k in zip(parsed["names"], keep) if k],
            extra={"truncated": parsed["truncated"][keep]},
        )


def voc_trainval_07_12(
    devkit_root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    keep_difficult: bool = True,
    transforms: Transforms | None = None,
    skip_invalid: bool = False,
    verify_images: str = "quick",
    progress: bool | None = None,
) -> DetectionConcat:
    """VOC2007 trainval + VOC2012 trainval (16551 images), the paper's "07+12" training set.

    Args:
        devkit_root: the ``VOCdevkit`` folder holding ``VOC2007/`` and ``VOC2012/``.
        Other arguments: as `VOCDataset`.
    """
    root = Path(devkit_root)
    parts = []
    for year in ("VOC2007", "VOC2012"):
        if not (root / year).is_dir():
            raise ValueError(f"{root}: no {year} folder (expected a VOCdevkit root)")
        parts.append(
            VOCDataset(
                root / year,
                "trainval",
                classes=classes,
                keep_difficult=keep_difficult,
                transforms=transforms,
                skip_invalid=skip_invalid,
                verify_images=verify_images,
                progress=progress,
            )
        )
    return DetectionConcat(parts)
