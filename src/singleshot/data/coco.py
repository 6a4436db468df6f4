"""COCO: an instances JSON file and its image folder.

COCO boxes are ``[x, y, width, height]`` in continuous 0-based pixels; they become
xyxy ``(x, y, x + width, y + height)``. Category ids are sparse (1..90 for 80 classes):
labels 1..K follow the ids in ascending order, and both maps are kept for writing
results back in COCO's ids.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from .common import DetectionDataset, Record, Transforms, make_record
from .validation import SIZE_MISMATCH, InvalidItem, Problems, check_image, progress_bar

__all__ = ["COCODataset", "load_coco_json", "grouping_category_ids"]

# Declared image sizes above this are refused (verify_images="none" trusts them).
_MAX_SIDE = 2**31


def load_coco_json(annotation_file: Path) -> dict[str, Any]:
    """Read an instances file and check its top-level structure.

    Raises:
        ValueError: missing file, malformed JSON, or missing "images" / "categories" lists;
            names the file.
    """
    try:
        with annotation_file.open("r", encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"{annotation_file}: annotation file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotation_file}: malformed JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotation_file}: cannot read the annotations ({error})") from None
    except RecursionError:
        raise ValueError(f"{annotation_file}: malformed JSON (nested too deeply)") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{annotation_file}: malformed JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{annotation_file}: expected a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{annotation_file}: missing the {key!r} list")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{annotation_file}: 'annotations' is not a list")
    return data


def grouping_category_ids(data: dict[str, Any]) -> set[int]:
    """Ids of the categories that only group others: named as another category's
    ``supercategory`` and used by no annotation. Roboflow's COCO exports put one first
    (id 0, the project's name, supercategory "none"; the classes name it as their
    supercategory), which is not a class."""
    categories = [c for c in data["categories"] if isinstance(c, dict)]
    parents = {c.get("supercategory") for c in categories}
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    return {
        c["id"]
        for c in categories
        if isinstance(c.get("id"), int) and c["id"] not in used and c.get("name") in parents
    }


def _categories(data: dict[str, Any], path: Path, drop: set[int]) -> tuple[list[str], dict[int, int]]:
    by_id: dict[int, str] = {}
    for k, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ValueError(f"{path}: category {k} has no integer 'id'")
        if category["id"] in by_id:
            raise ValueError(f"{path}: category id {category['id']} appears twice")
        if category["id"] not in drop:
            by_id[category["id"]] = str(category.get("name", category["id"]))
    if not by_id:
        raise ValueError(f"{path}: no categories")
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {category_id: k + 1 for k, category_id in enumerate(ids)}


def _is_int(value: Any) -> TypeGuard[int]:
    """An integer id or size as JSON gives it (true and false are not numbers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _box(annotation: dict[str, Any], path: Path, what: str) -> tuple[float, float, float, float]:
    bbox = annotation.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise InvalidItem(path, f"{what}: 'bbox' must be [x, y, width, height], got {bbox!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise InvalidItem(path, f"{what}: 'bbox' has a non-numeric value: {bbox!r}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except OverflowError:  # an integer beyond float range
        x = y = w = h = math.inf
    if not all(math.isfinite(v) for v in (x, y, w, h, x + w, y + h)):
        raise InvalidItem(path, f"{what}: 'bbox' is not finite: {bbox!r}")
    if w < 0 or h < 0:
        raise InvalidItem(path, f"{what}: inverted box (negative width or height): {bbox!r}")
    if w == 0 or h == 0:
        raise InvalidItem(path, f"{what}: empty box (zero width or height): {bbox!r}")
    return x, y, x + w, y + h


class COCODataset(DetectionDataset):
    """A COCO-format detection set (instances JSON + image folder).

    Images without annotations are kept (they count in evaluation). ``iscrowd`` objects are
    reported as ``difficult``. Boxes are xyxy continuous 0-based pixels (COCO's own
    convention, so no offset); boxes reaching outside the image are clipped and counted in
    ``warnings``. ``image_id`` in the targets is the int COCO image id. Images are read in
    stored pixel order (no EXIF rotation), like COCO's annotations.

    Args:
        image_dir: folder the images' ``file_name`` entries are relative to.
        annotation_file: the instances JSON.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid images or annotations (listed in ``skipped``)
            instead of raising. A malformed JSON file always raises.
        verify_images: "quick", "full" or "none" (trust the JSON's width and height);
            see `singleshot.data.validation.check_image`.
        progress: progress bar while parsing; None = only for 1000 images or more.
        drop_grouping_categories: leave out the categories that only group others
            (`grouping_category_ids`, Roboflow's root category) instead of making them classes.

    Attributes:
        label_to_category_id: {label 1..K: COCO category id}.
        category_id_to_label: the inverse map.
        annotation_file: Path of the JSON.
        image_dir: Path of the image folder.
    """

    difficult_name = "crowd"  # the ``difficult`` flag holds ``iscrowd``

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transforms: Transforms | None = None,
        skip_invalid: bool = False,
        verify_images: str = "quick",
        progress: bool | None = None,
        drop_grouping_categories: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        path = self.annotation_file
        data = load_coco_json(path)
        drop = grouping_category_ids(data) if drop_grouping_categories else set()
        names, self.category_id_to_label = _categories(data, path, drop)
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        problems = Problems(skip_invalid)
        images = self._images(data, problems)
        by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for k, annotation in enumerate(data.get("annotations", [])):
            image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
            if not _is_int(image_id) or image_id not in images:
                what = f"annotation {k} (id {annotation.get('id') if isinstance(annotation, dict) else '?'})"
                problems.invalid(InvalidItem(path, f"{what}: unknown image_id {image_id!r}"))
                continue
            by_image[image_id].append(annotation)
        records = []
        for image_id, image in progress_bar(images.items(), len(images), f"reading {path.name}", progress):
            try:
                records.append(
                    self._load(image_id, image, by_image.get(image_id, []), problems, verify_images)
                )
            except InvalidItem as error:
                problems.invalid(error)
        super().__init__(records, names, transforms, problems, source=path)
        problems.emit_warnings(path)

    def _images(self, data: dict[str, Any], problems: Problems) -> dict[int, dict[str, Any]]:
        images: dict[int, dict[str, Any]] = {}
        for k, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not _is_int(image.get("id")):
                problems.invalid(InvalidItem(self.annotation_file, f"image entry {k} has no integer 'id'"))
                continue
            if not isinstance(image.get("file_name"), str):
                problems.invalid(InvalidItem(self.annotation_file, f"image {image['id']}: no 'file_name'"))
                continue
            if image["id"] in images:
                raise ValueError(f"{self.annotation_file}: image id {image['id']} appears twice")
            images[image["id"]] = image
        return images

    def _load(
        self,
        image_id: int,
        image: dict[str, Any],
        annotations: list[dict[str, Any]],
        problems: Problems,
        verify: str,
    ) -> Record:
        path = self.annotation_file
        image_path = self.image_dir / image["file_name"]
        declared = (image.get("height"), image.get("width"))
        stored = check_image(image_path, verify)
        if stored is None:
            height, width = declared
            if not (_is_int(height) and _is_int(width) and 0 < height < _MAX_SIDE and 0 < width < _MAX_SIDE):
                raise InvalidItem(
                    path, f"image {image_id}: no valid width/height {declared[::-1]} and verify_images='none'"
                )
            stored = (height, width)
        elif all(_is_int(v) for v in declared) and declared != stored:
            problems.warn(SIZE_MISMATCH)
        boxes, labels, crowd, names = [], [], [], []
        for annotation in annotations:
            what = f"image {image_id} ({image['file_name']}), annotation {annotation.get('id', '?')}"
            category = annotation.get("category_id")
            label = self.category_id_to_label.get(category) if _is_int(category) else None
            if label is None:
                raise InvalidItem(path, f"{what}: unknown category_id {category!r}")
            boxes.append(_box(annotation, path, what))
            labels.append(label)
            iscrowd = annotation.get("iscrowd", 0)
            if iscrowd not in (0, 1) or not isinstance(iscrowd, int):
                raise InvalidItem(path, f"{what}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
            crowd.append(bool(iscrowd))
            names.append(what)
        return make_record(
            path,
            image_path,
            image_id,
            stored[0],
            stored[1],
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
            np.asarray(crowd, dtype=bool),
            problems,
            names=names,
        )
