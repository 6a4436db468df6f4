"""`singleshot.evaluation.report`: the one metrics.json writer."""

import json
import math

import numpy as np
import pytest

from singleshot.evaluation import write_metrics
from singleshot.evaluation.report import REQUIRED_KEYS, metrics_document

CONTEXT = {"checkpoint": "runs/x/best.pt", "data": "VOC2007", "split": "test"}


def voc_result():
    return {
        "ap": {1: 0.5, 2: 0.25},
        "curves": {1: {"recall": np.array([0.5]), "precision": np.array([1.0])}},
        "num_ground_truth": {1: 2, 2: 4},
        "metric": "voc07",
        "iou_threshold": 0.5,
        "map": 0.375,
        "num_images": 3,
    }


def test_write_metrics_round_trip(tmp_path):
    path = write_metrics(tmp_path / "metrics.json", voc_result(), ["__background__", "cat", "dog"],
                         score_threshold=0.01, **CONTEXT)  # fmt: skip
    text = path.read_text()
    assert text.endswith("}\n")
    document = json.loads(text)
    assert set(REQUIRED_KEYS) <= set(document)
    assert document == {
        **CONTEXT,
        "score_threshold": 0.01,
        "ap": {"cat": 0.5, "dog": 0.25},
        "num_ground_truth": {"cat": 2, "dog": 4},
        "metric": "voc07",
        "iou_threshold": 0.5,
        "map": 0.375,
        "num_images": 3,
    }


def test_nan_is_null_and_unnamed_labels_keep_a_name():
    result = {**voc_result(), "map": float("nan"), "ap": {3: math.inf}}
    document = metrics_document(result, None, **CONTEXT)
    assert document["map"] is None and document["ap"] == {"class 3": None}
    json.dumps(document, allow_nan=False)  # strict JSON


def test_missing_and_clashing_keys_are_errors():
    with pytest.raises(ValueError, match="metrics.json: missing split"):
        metrics_document(voc_result(), None, checkpoint="a.pt", data="d")
    result = {key: value for key, value in voc_result().items() if key != "num_images"}
    with pytest.raises(ValueError, match="metrics.json: missing num_images"):
        metrics_document(result, None, **CONTEXT)
    with pytest.raises(ValueError, match="context keys map are already in the result"):
        metrics_document(voc_result(), None, map=1.0, **CONTEXT)
