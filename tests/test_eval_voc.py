import math

import numpy as np
import pytest
import torch

from singleshot.evaluation import evaluate_voc, voc_ap
from tolerances import EPS64, rounding

# APs in float64 from <= 250 precision-recall points (the random cases: 30 images, <= 7
# detections each), each a division for recall and for precision, then a difference, a
# product and a sum, or p / 11 summed: <= 4 roundings per point at magnitude <= 1.
AP_TOL = rounding(1.0, ops=1000, eps=EPS64)


def matlab_colon(a, d, b):
    """MATLAB's a:d:b: first half a + k*d, second half b - (n - k)*d (its documented algorithm)."""
    n = round((b - a) / d)
    return [a + k * d if k <= n / 2 else b - (n - k) * d for k in range(n + 1)]


def devkit_reference(detections, ground_truths, threshold, use_07):
    """VOCevaldet.m written out as loops, on the devkit's inclusive pixel boxes as given."""

    def inclusive(box):
        return list(box)

    labels = set()
    for gt in ground_truths:
        labels.update(int(v) for v in gt["labels"])
    aps = {}
    for cls in sorted(labels):
        gts, npos = [], 0
        for gt in ground_truths:
            keep = [i for i, v in enumerate(gt["labels"]) if int(v) == cls]
            difficult = [bool(gt.get("difficult", [False] * len(gt["labels"]))[i]) for i in keep]
            gts.append({"bb": [inclusive(list(map(float, gt["boxes"][i]))) for i in keep], "diff": difficult})
            gts[-1]["det"] = [False] * len(keep)
            npos += sum(not d for d in difficult)
        if npos == 0:
            continue
        dets = []
        for image, det in enumerate(detections):
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                if int(label) == cls:
                    dets.append((float(score), image, inclusive(list(map(float, box)))))
        dets = sorted(dets, key=lambda d: -d[0])  # Python's sort is stable, like MATLAB's
        tp, fp = [], []
        for _, image, bb in dets:
            ovmax, jmax = -math.inf, None
            for j, bbgt in enumerate(gts[image]["bb"]):
                iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
                ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
                if iw > 0 and ih > 0:
                    ua = (
                        (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                        + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                        - iw * ih
                    )
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            t, f = 0, 0
            if ovmax >= threshold:
                if not gts[image]["diff"][jmax]:
                    if not gts[image]["det"][jmax]:
                        t = 1
                        gts[image]["det"][jmax] = True
                    else:
                        f = 1
            else:
                f = 1
            tp.append(t)
            fp.append(f)
        ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        rec = ctp / npos
        with np.errstate(invalid="ignore"):
            prec = ctp / (ctp + cfp)  # NaN for leading ignored detections, as in MATLAB
        if use_07:
            ap = 0.0
            for t in matlab_colon(0.0, 0.1, 1.0):
                sel = prec[rec >= t]
                sel = sel[~np.isnan(sel)]
                ap += (sel.max() if sel.size else 0.0) / 11
        else:
            mrec = [0.0, *rec.tolist(), 1.0]
            mpre = [0.0, *np.nan_to_num(prec).tolist(), 0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
        aps[cls] = ap
    return aps


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def gt(boxes, labels, difficult=None):
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels),
    }
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return target


A = [10.0, 10.0, 50.0, 50.0]
B = [60.0, 60.0, 100.0, 90.0]
FAR = [200.0, 200.0, 220.0, 220.0]


@pytest.mark.parametrize("use_07", [True, False])
def test_perfect_detector_scores_one(use_07):
    gts = [gt([A, B], [1, 2]), gt([B], [1])]
    dets = [det([A, B], [0.9, 0.8], [1, 2]), det([B], [0.7], [1])]
    result = evaluate_voc(dets, gts, use_07_metric=use_07)
    assert result["ap"] == {1: 1.0, 2: 1.0}
    assert result["map"] == 1.0
    assert result["num_ground_truth"] == {1: 2, 2: 1}
    assert result["true_positives"] == {1: 2, 2: 1}


def test_duplicate_detection_is_a_false_positive():
    # Points: (recall 1/2, precision 1), duplicate (1/2, 1/2), (1, 2/3).
    gts = [gt([A, B], [1, 1])]
    dets = [det([A, [11.0, 10.0, 50.0, 50.0], B], [0.9, 0.8, 0.7], [1, 1, 1])]
    r07 = evaluate_voc(dets, gts, use_07_metric=True)
    r12 = evaluate_voc(dets, gts, use_07_metric=False)
    assert r07["ap"][1] == pytest.approx(
        (6 + 5 * 2 / 3) / 11, abs=AP_TOL
    )  # t = 0..0.5 -> 1, t = 0.6..1 -> 2/3
    assert r12["ap"][1] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=AP_TOL)
    # true positives / detections and / ground truths: the same float64 divisions
    assert r07["curves"][1]["precision"].tolist() == [1.0, 0.5, 2 / 3]
    assert r07["curves"][1]["recall"].tolist() == [0.5, 0.5, 1.0]
    assert r07["true_positives"][1] == 2 and r07["num_detections"][1] == 3


def test_eleven_point_and_area_on_a_hand_worked_curve():
    # 4 ground truths; detections in score order: T F T F T.
    # recall    .25  .25  .50  .50  .75
    # precision 1    1/2  2/3  1/2  3/5
    # 11-point: t in {0, .1, .2} -> 1; {.3, .4, .5} -> 2/3; {.6, .7} -> 3/5; {.8, .9, 1} -> 0.
    # area: .25 * 1 + .25 * 2/3 + .25 * 3/5 (envelope), nothing beyond recall .75.
    boxes = [[10.0 * i, 0.0, 10.0 * i + 8, 8.0] for i in range(4)]
    gts = [gt(boxes, [3] * 4)]
    dets = [
        det(
            [boxes[0], FAR, boxes[1], FAR, boxes[2]],
            [0.9, 0.8, 0.7, 0.6, 0.5],
            [3] * 5,
        )
    ]
    assert evaluate_voc(dets, gts)["ap"][3] == pytest.approx((3 + 3 * 2 / 3 + 2 * 0.6) / 11, abs=AP_TOL)
    assert evaluate_voc(dets, gts, use_07_metric=False)["ap"][3] == pytest.approx(
        0.25 + 0.25 * 2 / 3 + 0.25 * 0.6, abs=AP_TOL
    )
    # Input order of detections does not matter, only scores.
    shuffled = [det([boxes[2], FAR, boxes[0], boxes[1], FAR], [0.5, 0.6, 0.9, 0.7, 0.8], [3] * 5)]
    assert evaluate_voc(shuffled, gts)["ap"][3] == pytest.approx(6.2 / 11, abs=AP_TOL)


def test_eleven_point_thresholds_are_matlabs_colon():
    # 10 ground truths, 3 found: recall reaches exactly 3/10, which is below MATLAB's
    # (and numpy's) 3*0.1 = 0.30000000000000004, so only t = 0, .1, .2 count.
    boxes = [[10.0 * i, 0.0, 10.0 * i + 8, 8.0] for i in range(10)]
    gts = [gt(boxes, [1] * 10)]
    dets = [det(boxes[:3], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert evaluate_voc(dets, gts)["ap"][1] == 3 / 11
    assert voc_ap(np.array([0.6]), np.array([1.0])) == 7 / 11  # 0.6 reaches t = 0.6; exact sum, / 11


def test_difficult_objects_neither_counted_nor_penalised():
    gts = [gt([A, B], [1, 1], difficult=[False, True])]
    # The detection on the difficult box comes first: ignored, not a false positive.
    dets = [det([B, A], [0.95, 0.9], [1, 1])]
    result = evaluate_voc(dets, gts)
    assert result["ap"][1] == 1.0
    assert result["num_ground_truth"][1] == 1
    assert result["curves"][1]["recall"].tolist() == [1.0]  # the ignored detection has no point
    # Missing the difficult object costs nothing either.
    assert evaluate_voc([det([A], [0.9], [1])], gts)["ap"][1] == 1.0


def test_detection_goes_to_best_overlap_even_if_difficult():
    # X overlaps A (non-difficult) with IoU 0.6 and D (difficult) with IoU 0.8: it is
    # assigned to D and ignored, so A stays missed.
    a = [0.0, 0.0, 100.0, 100.0]
    d = [0.0, 0.0, 100.0, 80.0]
    x = [0.0, 0.0, 100.0, 64.0]  # IoU(x, a) = 0.64, IoU(x, d) = 0.8
    gts = [gt([a, d], [1, 1], difficult=[False, True])]
    result = evaluate_voc([det([x], [0.9], [1])], gts)
    assert result["ap"][1] == 0.0
    assert result["true_positives"][1] == 0
    assert len(result["curves"][1]["recall"]) == 0
    # Without the difficult box the same detection is a true positive.
    assert evaluate_voc([det([x], [0.9], [1])], [gt([a], [1])])["ap"][1] == 1.0


def test_taken_best_match_is_false_positive_even_if_another_ground_truth_is_free():
    # Devkit rule: a detection only ever looks at its best-overlap ground truth.
    a = [0.0, 0.0, 100.0, 100.0]
    b = [0.0, 30.0, 100.0, 130.0]
    second = [0.0, 10.0, 100.0, 110.0]  # IoU with a 0.818, with b 0.667
    gts = [gt([a, b], [1, 1])]
    result = evaluate_voc([det([a, second], [0.9, 0.8], [1, 1])], gts)
    assert result["true_positives"][1] == 1
    assert result["curves"][1]["precision"].tolist() == [1.0, 0.5]


def test_classes_without_non_difficult_ground_truth_are_left_out():
    gts = [gt([A, B], [1, 2], difficult=[False, True])]
    dets = [det([A, B, FAR], [0.9, 0.8, 0.7], [1, 2, 3])]
    result = evaluate_voc(dets, gts)
    assert set(result["ap"]) == {1}
    assert result["map"] == 1.0
    # A class with ground truth but no detection is in the mean with AP 0.
    result = evaluate_voc([det([A], [0.9], [1])], [gt([A, B], [1, 2])])
    assert result["ap"] == {1: 1.0, 2: 0.0}
    assert result["map"] == 0.5
    assert math.isnan(evaluate_voc([det([], [], [])], [gt([], [])])["map"])


def test_threshold_is_inclusive_and_box_convention_is_the_devkits():
    # Default: the devkit's inclusive pixel boxes; XML (1, 1, 10, 10) covers 10 x 10 pixels.
    truth_xml = [gt([[1.0, 1.0, 10.0, 10.0]], [1])]
    # 10 x 5 pixels: 50 / 100 (without the devkit's +1 it would be 36 / 81, below 0.5)
    exactly_half = [det([[1.0, 1.0, 10.0, 5.0]], [0.9], [1])]
    below = [det([[1.0, 1.0, 10.0, 4.8]], [0.9], [1])]  # 48 / 100
    assert evaluate_voc(exactly_half, truth_xml)["ap"][1] == 1.0  # IoU >= threshold, as VOCevaldet.m
    assert evaluate_voc(below, truth_xml)["ap"][1] == 0.0
    # One shared pixel column: an intersection of width 1 (inter 10, union 100 + 100 - 10).
    # IoU 10 / 190: integers, one correctly rounded division, so exactly the float 1 / 19;
    # thresholds one ulp below and above it decide
    touching = [det([[10.0, 1.0, 19.0, 10.0]], [0.9], [1])]
    assert evaluate_voc(touching, truth_xml, iou_threshold=math.nextafter(1 / 19, 0))["ap"][1] == 1.0
    assert evaluate_voc(touching, truth_xml, iou_threshold=math.nextafter(1 / 19, 1))["ap"][1] == 0.0
    # singleshot's continuous boxes (the readers' x1 - 1, y1 - 1) give the same verdicts.
    truth = [gt([[0.0, 0.0, 10.0, 10.0]], [1])]
    continuous = {"inclusive_boxes": False}
    assert evaluate_voc([det([[0.0, 0.0, 10.0, 5.0]], [0.9], [1])], truth, **continuous)["ap"][1] == 1.0
    assert evaluate_voc([det([[0.0, 0.0, 10.0, 4.8]], [0.9], [1])], truth, **continuous)["ap"][1] == 0.0
    touching = [det([[9.0, 0.0, 19.0, 10.0]], [0.9], [1])]
    assert (
        evaluate_voc(touching, truth, iou_threshold=math.nextafter(1 / 19, 0), **continuous)["ap"][1] == 1.0
    )


def random_case(seed, num_images=30, num_classes=4):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.integers(0, 80, size=(n, 2))
        wh = rng.integers(4, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float64)
        labels = rng.integers(1, num_classes + 1, size=n)
        difficult = rng.random(n) < 0.2
        gts.append({"boxes": boxes, "labels": labels, "difficult": difficult})
        m = int(rng.integers(0, 8))
        src = rng.integers(0, max(n, 1), size=m)
        jitter = rng.integers(-3, 4, size=(m, 4))
        base = boxes[src] if n else rng.integers(0, 80, size=(m, 4)).astype(np.float64)
        dboxes = np.sort((base + jitter).reshape(m, 2, 2), axis=1).reshape(m, 4)
        dlabels = labels[src] if n else rng.integers(1, num_classes + 1, size=m)
        flip = rng.random(m) < 0.2
        dlabels = np.where(flip, rng.integers(1, num_classes + 1, size=m), dlabels)
        scores = rng.integers(1, 8, size=m) / 8.0  # coarse, so that ties occur
        dets.append({"boxes": dboxes, "scores": scores, "labels": dlabels})
    return dets, gts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07, threshold", [(True, 0.5), (False, 0.5), (False, 0.7), (True, 0.3)])
def test_matches_devkit_loop_on_random_cases(seed, use_07, threshold):
    dets, gts = random_case(seed)
    expected = devkit_reference(dets, gts, threshold, use_07)
    result = evaluate_voc(dets, gts, iou_threshold=threshold, use_07_metric=use_07)
    assert set(result["ap"]) == set(expected)
    for label, ap in expected.items():
        assert result["ap"][label] == pytest.approx(ap, abs=AP_TOL)  # the devkit sums p / 11 one by one
    assert result["map"] == pytest.approx(np.mean(list(expected.values())), abs=AP_TOL)
    # The same boxes in singleshot's continuous form (x1 - 1, y1 - 1, x2, y2) give the same APs.
    shift = np.array([1.0, 1.0, 0.0, 0.0])
    continuous_dets = [dict(d, boxes=np.asarray(d["boxes"]).reshape(-1, 4) - shift) for d in dets]
    continuous_gts = [dict(g, boxes=np.asarray(g["boxes"]).reshape(-1, 4) - shift) for g in gts]
    again = evaluate_voc(
        continuous_dets, continuous_gts, iou_threshold=threshold, use_07_metric=use_07, inclusive_boxes=False
    )
    assert again["ap"] == result["ap"]  # the same decisions, then the same arithmetic


def test_tensor_and_list_inputs_agree():
    dets, gts = random_case(11)
    as_lists = [{k: np.asarray(v).tolist() for k, v in d.items()} for d in dets]
    as_tensors = [{k: torch.as_tensor(v) for k, v in g.items()} for g in gts]
    assert evaluate_voc(as_lists, as_tensors)["ap"] == evaluate_voc(dets, gts)["ap"]


@pytest.mark.parametrize(
    "dets, gts, message",
    [
        ([det([A], [0.9], [1])], [], "1 images of detections but 0"),
        (
            [{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.ones(2)}],
            [gt([A], [1])],
            "(N, 4)",
        ),
        ([det([A], [0.9, 0.8], [1])], [gt([A], [1])], "1 boxes but 2 scores"),
        ([det([A], [0.9], [1])], [{"boxes": torch.tensor([A])}], "no 'labels'"),
        ([det([A], [float("nan")], [1])], [gt([A], [1])], "finite"),
        ([det([A], [0.9], [-1])], [gt([A], [1])], "negative detection label"),
    ],
)
def test_bad_inputs_raise(dets, gts, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_voc(dets, gts)


def test_detections_overlapping_no_ground_truth_of_their_class_are_false_positives():
    # the only detection of class 1 shares an image and class with a ground truth but misses it
    detections = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([1])}]  # fmt: skip
    ground_truths = [{"boxes": torch.tensor([[5.0, 5.0, 6.0, 6.0]]), "labels": torch.tensor([1])}]
    for inclusive in (True, False):
        result = evaluate_voc(detections, ground_truths, inclusive_boxes=inclusive)
        assert result["ap"] == {1: 0.0} and result["map"] == 0.0
    # a second detection that hits it: recall 1 reached at precision 1/2
    detections[0]["boxes"] = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    detections[0]["scores"], detections[0]["labels"] = torch.tensor([0.9, 0.8]), torch.tensor([1, 1])
    result = evaluate_voc(detections, ground_truths, use_07_metric=False, inclusive_boxes=False)
    assert result["ap"] == {1: 0.5}
