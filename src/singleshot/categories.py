"""COCO category ids for a model's labels, and one image's detections in the COCO results format.

A model's labels are contiguous (1..C-1); a COCO results file wants the dataset's own
category ids, which are sparse (1..90 for COCO's 80 classes) or anything a custom set
chose. `label_to_category_map` finds them by class name; `coco_results` writes one image's
detections as COCO results records with them. `singleshot detect`, `Detections.to_json` and
`singleshot.evaluation.detections_to_coco_results` all go through these two functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["file_categories", "label_to_category_map", "category_lookup", "coco_results", "plain_id"]


def file_categories(path: str | os.PathLike) -> dict[str, int]:
    """{name: category id} of a COCO annotation file's "categories" list.

    Raises:
        ValueError: the file is not COCO JSON, or a category lacks a string name or an int id.
    """
    from .data.coco import load_coco_json

    data = load_coco_json(Path(path))
    pairs = [(c.get("name"), c.get("id")) for c in data["categories"] if isinstance(c, dict)]
    named = [(n, i) for n, i in pairs if isinstance(n, str) and isinstance(i, int)]
    if not pairs or len(named) != len(pairs):
        raise ValueError(f"{path}: every category needs a string 'name' and an integer 'id'")
    return dict(named)


def label_to_category_map(
    class_names: Sequence[str] | None,
    category_ids: Sequence[int] | None = None,
    categories: str | os.PathLike | None = None,
) -> dict[int, int] | None:
    """{model label: category id} for COCO results, found by class name.

    Args:
        class_names: the model's names, index = label (0 = background); None = unknown.
        category_ids: the id of each label in the set the model was trained on
            (``model.category_ids``), or None.
        categories: a COCO annotation file whose "categories" name every class of the model.

    Returns:
        In this order: the ids of ``categories``; ``category_ids``; COCO's own ids (1..90)
        for a model of COCO's 80 classes (any order, or the 91-entry layout); else None
        (the labels are the category ids).

    Raises:
        ValueError: ``categories`` is given but unreadable, the model has no names, or the
            names differ (the message lists them).
    """
    from .classes import match_classes
    from .data.common import BACKGROUND

    if categories is not None:
        by_name = file_categories(categories)
        if class_names is None:
            raise ValueError(f"--categories {categories}: the checkpoint has no class names to look up")
        order = [BACKGROUND, *by_name]
        try:
            match = match_classes(class_names, order)
        except ValueError as error:
            raise ValueError(f"--categories {categories}: {error}") from None
        return {
            label: by_name[order[int(match.model_to_dataset[label])]] for label in range(1, len(class_names))
        }
    if category_ids is not None:
        return {label: int(category) for label, category in enumerate(category_ids)}
    if class_names is None:
        return None
    return _coco_ids_by_name(class_names)


def _coco_ids_by_name(class_names: Sequence[str]) -> dict[int, int] | None:
    """COCO's category id of each label when the names are exactly COCO's 80 (or its 91-entry
    layout with "N/A" gaps), else None."""
    from .weights.names import coco_names_91

    coco = {name: index for index, name in enumerate(coco_names_91()) if index > 0 and name != "N/A"}
    if {name for name in class_names[1:] if name != "N/A"} != set(coco):
        return None
    return {label: coco.get(name, label) for label, name in enumerate(class_names) if label > 0}


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def plain_id(value: Any) -> Any:
    """Image ids as JSON-friendly Python values (ints stay ints, strings stay strings)."""
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return value


def category_lookup(label_to_category_id: Mapping[int, int] | None, labels: np.ndarray) -> np.ndarray:
    """The category id of each label, int64 (N,); None keeps the labels.

    Raises:
        ValueError: a label has no entry in the map.
    """
    if label_to_category_id is None:
        return labels.astype(np.int64)
    table = {int(k): int(v) for k, v in label_to_category_id.items()}
    missing = sorted(set(np.unique(labels).tolist()) - table.keys())
    if missing:
        raise ValueError(f"labels {missing} have no entry in label_to_category_id")
    return np.array([table[label] for label in labels.tolist()], dtype=np.int64)


def coco_results(
    detection: Mapping[str, Any],
    image_id: Any,
    label_to_category_id: Mapping[int, int] | None = None,
    decimals: int | None = None,
    what: str = "detections",
) -> list[dict[str, Any]]:
    """One image's detections as COCO results: [{"image_id", "category_id", "bbox", "score"}].

    Args:
        detection: ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` (N,) int.
        image_id: the image's id in the dataset (an int, or a file name).
        label_to_category_id: {label: category id}; None keeps the labels as category ids.
        decimals: round boxes to this many decimals and scores to this many + 2; None keeps
            full precision.
        what: how errors name the detections.

    Returns:
        One dict per detection, in the given order, ``bbox`` = [x1, y1, x2 - x1, y2 - y1] pixels.
    """
    boxes = _numpy(detection["boxes"], np.float64).reshape(-1, 4)
    scores = _numpy(detection["scores"], np.float64).reshape(-1)
    labels = _numpy(detection["labels"], np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{what}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    if not len(boxes):
        return []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    if decimals is not None:
        xywh = np.round(xywh, decimals)
        scores = np.round(scores, decimals + 2)
    categories = category_lookup(label_to_category_id, labels)
    image_id = plain_id(image_id)
    return [
        {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
        for category, box, score in zip(categories.tolist(), xywh.tolist(), scores.tolist())
    ]
