"""``metrics.json``: the one file format that ``singleshot eval`` and ``singleshot demo`` write.

Schema (a JSON object; per-class entries keyed by class name; NaN written as null):

- ``metric``: "voc07", "voc12" or "coco" (from the evaluation).
- ``map``: the mean AP (VOC: over classes with ground truth; COCO: AP@[.50:.95]).
- ``ap``: {class name: AP}.
- ``num_images``: images evaluated.
- ``checkpoint``, ``data``, ``split``: what was evaluated (split null for a COCO file pair).
- every other key of the evaluation's result except ``curves`` (VOC: ``num_ground_truth``,
  ``num_detections``, ``true_positives``, ``iou_threshold``; COCO: ``AP``, ``AP50``, ...,
  ``stats``, ``per_class``), see `evaluate_voc` and `evaluate_coco`.
- the writer's own context: ``eval`` adds ``class_map``, ``score_threshold`` and ``runtime``
  ("torch" for a checkpoint, else what ran the exported file: "onnxruntime", "openvino"); the demo
  adds ``model``, ``num_train_images``, ``num_test_images`` (= ``num_images``, kept for
  earlier readers), ``iterations``, ``train_seconds``, ``stopped_by_budget``,
  ``follows_clock_from``, ``final_loss``, ``threads`` and ``config``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from .plots import class_name

__all__ = ["REQUIRED_KEYS", "metrics_document", "write_metrics"]

# keys every metrics.json has, whoever wrote it
REQUIRED_KEYS = ("metric", "map", "ap", "num_images", "checkpoint", "data", "split")


def _json_safe(value: Any) -> Any:
    """Numbers, containers and arrays as JSON (nan -> null, int keys -> strings)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_document(
    result: Mapping[str, Any], class_names: Sequence[str] | Mapping[int, str] | None, **context: Any
) -> dict[str, Any]:
    """The metrics.json content (see the module docstring) as a JSON-ready dict.

    Args:
        result: what `evaluate_model` (or `evaluate_voc` / `evaluate_coco` plus
            ``num_images``) returns; {label: value} entries become {class name: value}.
        class_names: the dataset's names by label (index 0 = background), or None.
        context: the writer's keys, which must include ``checkpoint``, ``data`` and ``split``.

    Raises:
        ValueError: a required key is missing, or a context key is also a result key.
    """
    clash = sorted(set(context) & set(result))
    if clash:
        raise ValueError(f"metrics.json: context keys {', '.join(clash)} are already in the result")
    document: dict[str, Any] = dict(context)
    for key, value in result.items():
        if key == "curves":
            continue
        if isinstance(value, Mapping) and value and all(isinstance(k, int) for k in value):
            value = {class_name(class_names, k): v for k, v in value.items()}
        document[key] = value
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise ValueError(f"metrics.json: missing {', '.join(missing)}")
    return _json_safe(document)


def write_metrics(
    path: str | os.PathLike,
    result: Mapping[str, Any],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    **context: Any,
) -> Path:
    """Write `metrics_document` to ``path`` (indented JSON, one trailing newline); return the path."""
    path = Path(path)
    document = metrics_document(result, class_names, **context)
    return atomic_write_text(path, json.dumps(document, indent=2) + "\n")
