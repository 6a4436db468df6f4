import json
import math

import numpy as np
import pytest
import torch

from singleshot.evaluation import (
    COCO_STAT_NAMES,
    detections_to_coco_results,
    evaluate_coco,
    evaluate_coco_file,
    write_coco_results,
)
from tolerances import EPS64, rounding

# One image, two classes (labels 1, 2 = COCO category ids 18, 44).
# Class 1: ground truths A, B (50 x 50, "medium"); detections A (0.9), a miss (0.8, also
#   medium: a detection outside an area range would not count in that range), B (0.7),
#   at every IoU threshold: points (1/2, 1), (1/2, 1/2), (1, 2/3); COCO's 101-point
#   interpolation gives precision 1 at recall 0..0.50 (51 points) and 2/3 at 0.51..1 (50
#   points): AP = (51 + 50 * 2/3) / 101 = 253/303.
# Class 2: ground truth C (100 x 100, "large"), one detection of IoU 0.62 (0.6): a true
#   positive at IoU thresholds .50, .55, .60 only: AP = 3/10, AP50 = 1, AP75 = 0.
A, B, MISS = [10.0, 10.0, 60.0, 60.0], [100.0, 100.0, 150.0, 150.0], [400.0, 400.0, 450.0, 450.0]
C, C_DET = [200.0, 0.0, 300.0, 100.0], [200.0, 0.0, 300.0, 62.0]
CLASS1_AP = 253 / 303
LABEL_TO_CATEGORY = {1: 18, 2: 44}
# pycocotools' summaries are float64 means of <= 10 IoU thresholds x 101 recall points x 2
# classes of precisions in [0, 1]: within rounding(1, ops=2020) in float64 (4.5e-13).
AP_TOL = rounding(1.0, ops=2020, eps=EPS64)


def ground_truth(extra_boxes=(), extra_labels=(), extra_difficult=()):
    return {
        "boxes": torch.tensor([A, B, C, *extra_boxes]),
        "labels": torch.tensor([1, 1, 2, *extra_labels]),
        "difficult": torch.tensor([False, False, False, *extra_difficult]),
        "size": (480, 640),
    }


def detections(extra_boxes=(), extra_scores=(), extra_labels=()):
    return {
        "boxes": torch.tensor([A, MISS, B, C_DET, *extra_boxes]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, *extra_scores]),
        "labels": torch.tensor([1, 1, 1, 2, *extra_labels]),
    }


def test_known_ap_values():
    result = evaluate_coco([detections()], [ground_truth()], label_to_category_id=LABEL_TO_CATEGORY)
    assert result["AP"] == pytest.approx((CLASS1_AP + 0.3) / 2, abs=AP_TOL)
    assert result["AP50"] == pytest.approx((CLASS1_AP + 1.0) / 2, abs=AP_TOL)
    assert result["AP75"] == pytest.approx(CLASS1_AP / 2, abs=AP_TOL)
    assert math.isnan(result["APs"])  # no small object
    assert result["APm"] == pytest.approx(CLASS1_AP, abs=AP_TOL)
    assert result["APl"] == pytest.approx(0.3, abs=AP_TOL)
    assert result["AR1"] == pytest.approx((0.5 + 0.3) / 2, abs=AP_TOL)  # one detection per image and class
    assert result["AR100"] == pytest.approx((1.0 + 0.3) / 2, abs=AP_TOL)
    assert result["map"] == result["AP"]
    np.testing.assert_array_equal(result["stats"], [result[name] for name in COCO_STAT_NAMES])  # copies
    assert result["per_class"][1] == pytest.approx(
        {"category_id": 18, "AP": CLASS1_AP, "AP50": CLASS1_AP, "AP75": CLASS1_AP}, abs=AP_TOL
    )
    assert result["per_class"][2] == pytest.approx(
        {"category_id": 44, "AP": 0.3, "AP50": 1.0, "AP75": 0.0}, abs=AP_TOL
    )
    curve = result["curves"][1]
    assert curve["recall"].shape == curve["precision"].shape == (101,)
    # pycocotools divides by tp + fp + eps64: that eps and the division's rounding
    assert curve["precision"][:51] == pytest.approx([1.0] * 51, abs=rounding(1.0, ops=2, eps=EPS64))
    assert curve["precision"][51:] == pytest.approx([2 / 3] * 50, abs=rounding(1.0, ops=2, eps=EPS64))


def test_difficult_is_a_crowd_region_neither_counted_nor_penalised():
    gt = ground_truth(extra_boxes=[[300.0, 300.0, 340.0, 340.0]], extra_labels=[1], extra_difficult=[True])
    dets = detections(extra_boxes=[[300.0, 300.0, 340.0, 340.0]], extra_scores=[0.95], extra_labels=[1])
    result = evaluate_coco([dets], [gt], label_to_category_id=LABEL_TO_CATEGORY)
    assert result["per_class"][1]["AP"] == pytest.approx(CLASS1_AP, abs=AP_TOL)
    # As a normal object it would lower recall and the result.
    gt["difficult"][-1] = False
    assert evaluate_coco([detections()], [gt])["per_class"][1]["AP"] < CLASS1_AP - 0.1


def test_target_area_decides_the_size_range():
    # COCO ranks objects by their segment area; targets may carry it. Class 1's objects
    # declared small: both are found (the unmatched medium-sized miss does not count there).
    gt = ground_truth()
    gt["area"] = torch.tensor([500.0, 500.0, 10000.0])
    result = evaluate_coco([detections()], [gt])
    assert result["APs"] == pytest.approx(1.0, abs=AP_TOL)
    assert math.isnan(result["APm"])
    assert result["AP"] == pytest.approx((CLASS1_AP + 0.3) / 2, abs=AP_TOL)  # "all" ignores areas


def test_identity_labels_and_empty_detections():
    result = evaluate_coco([detections()], [ground_truth()])
    assert result["per_class"][1]["category_id"] == 1 and result["per_class"][2]["category_id"] == 2
    assert result["AP"] == pytest.approx((CLASS1_AP + 0.3) / 2, abs=AP_TOL)
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    result = evaluate_coco([empty], [ground_truth()])
    assert result["AP"] == 0.0 and result["per_class"][1]["AP"] == 0.0


def test_pycocotools_output_is_captured_unless_verbose(capsys):
    evaluate_coco([detections()], [ground_truth()])
    assert capsys.readouterr().out == ""
    evaluate_coco([detections()], [ground_truth()], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def annotation_file(tmp_path):
    """Images 7 (the scene above), 9 (empty) and 11 (one more class-1 object)."""

    def ann(k, image_id, box, category):
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        return {"id": k, "image_id": image_id, "category_id": category, "bbox": [x1, y1, w, h],
                "area": w * h, "iscrowd": 0}  # fmt: skip

    data = {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (7, 9, 11)],
        "annotations": [ann(1, 7, A, 18), ann(2, 7, B, 18), ann(3, 7, C, 44), ann(4, 11, A, 18)],
        "categories": [{"id": 18, "name": "dog"}, {"id": 44, "name": "bottle"}, {"id": 3, "name": "car"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_annotation_file_form_evaluates_only_the_given_images(tmp_path):
    path = annotation_file(tmp_path)
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    result = evaluate_coco_file([detections(), empty], path, [7, 9], LABEL_TO_CATEGORY)
    assert result["AP"] == pytest.approx((CLASS1_AP + 0.3) / 2, abs=AP_TOL)
    assert set(result["per_class"]) == {1, 2}  # category 3 has no ground truth: left out
    # With image 11 (one more dog, not detected), class 1's points become (1/3, 1), (1/3, 1/2),
    # (2/3, 2/3): precision 1 at recall 0..0.33 (34 points), 2/3 at 0.34..0.66 (33), 0 after.
    result = evaluate_coco_file([detections(), empty], path, [7, 11], LABEL_TO_CATEGORY)
    assert result["per_class"][1]["AP"] == pytest.approx((34 + 33 * 2 / 3) / 101, abs=AP_TOL)


def test_annotation_file_errors(tmp_path):
    path = annotation_file(tmp_path)
    with pytest.raises(ValueError, match="image ids not in the annotation file"):
        evaluate_coco_file([detections()], path, [8], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="no such annotation file"):
        evaluate_coco_file([detections()], tmp_path / "missing.json", [7], LABEL_TO_CATEGORY)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a COCO annotation file"):
        evaluate_coco_file([detections()], bad, [7], LABEL_TO_CATEGORY)


def test_write_coco_results_round_trip(tmp_path):
    dets = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.5, 60.25]]), "scores": torch.tensor([0.75]),
         "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0], [5.0, 5.0, 6.0, 6.0]]),
         "scores": torch.tensor([0.5, 0.25]), "labels": torch.tensor([1, 2])},
    ]  # fmt: skip
    path = write_coco_results(dets, [139, 285, "000123"], LABEL_TO_CATEGORY, tmp_path / "out" / "dets.json")
    records = json.loads(path.read_text())
    assert records == [
        {"image_id": 139, "category_id": 44, "bbox": [10.0, 20.0, 30.5, 40.25], "score": 0.75},
        {"image_id": "000123", "category_id": 18, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.5},
        {"image_id": "000123", "category_id": 44, "bbox": [5.0, 5.0, 1.0, 1.0], "score": 0.25},
    ]
    rounded = detections_to_coco_results(
        [{"boxes": torch.tensor([[1.23456, 0.0, 3.0, 4.0]], dtype=torch.float64),
          "scores": torch.tensor([0.123456789]), "labels": torch.tensor([1])}],
        [1], None, decimals=2,
    )  # fmt: skip
    assert rounded[0]["bbox"] == [1.23, 0.0, 1.77, 4.0] and rounded[0]["score"] == 0.1235
    assert rounded[0]["category_id"] == 1
    with pytest.raises(ValueError, match=r"labels \[2\] have no entry"):
        detections_to_coco_results(dets[:1], [1], {1: 18})
    with pytest.raises(ValueError, match="2 image ids"):
        detections_to_coco_results(dets[:1], [1, 2])
