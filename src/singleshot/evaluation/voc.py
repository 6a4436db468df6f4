"""PASCAL VOC detection AP, exactly as the official devkit computes it (``VOCevaldet.m``).

Hand-written rather than taken from a library because the numbers must match the
devkit's to the last digit: the devkit's rules differ in small ways from every
generic AP implementation (``>=`` on the IoU threshold, difficult objects that are
neither counted nor penalised, the 11-point thresholds as MATLAB's ``0:0.1:1``
computes them).

The devkit's matching is a loop over detections in descending score order, but it
vectorises: each detection's candidate ground truth (the one of maximal IoU in its
image and class) does not depend on the loop's state, and a candidate match is a true
positive exactly when it is the first, in score order, to claim its ground truth.
So one pass computes the IoU of every (detection, ground truth) pair of the same image
and class, one segmented argmax picks the candidates, and one ``np.unique`` finds the
first claims; only the per-class cumulative sums loop over classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..boxes import iou as box_iou

__all__ = ["evaluate_voc", "voc_ap", "VOC07_RECALL_THRESHOLDS"]

# The devkit's `for t=0:0.1:1`. MATLAB builds the first half of a colon range as
# a + k*d and the second half as b - (n-k)*d, so the fourth threshold is 3*0.1 =
# 0.30000000000000004 (a recall of exactly 3/10 does not reach it) while 0.6 and 0.7
# are the doubles nearest 0.6 and 0.7. (voc_eval.py's np.arange(0, 1.1, 0.1) agrees on
# 0.3 but drifts to 0.6000000000000001 and 0.7000000000000001.)
VOC07_RECALL_THRESHOLDS = np.array([k * 0.1 for k in range(6)] + [1.0 - (10 - k) * 0.1 for k in range(6, 11)])


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision of one class from its precision-recall points.

    Args:
        recall: (K,) float64, non-decreasing: true positives so far / ground truths.
        precision: (K,) float64: true positives so far / detections so far.
        use_07_metric: True: VOC2007's 11-point interpolated AP, the mean over
            t in 0, 0.1, ..., 1 of the best precision at recall >= t (0 where recall
            never reaches t). False: VOC2010+'s area under the precision envelope
            (precision made non-increasing from the right), integrated over recall.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        # Best precision at recall >= t: recall is sorted, so that is a suffix maximum.
        suffix_max = np.maximum.accumulate(precision[::-1])[::-1]
        first = np.searchsorted(recall, VOC07_RECALL_THRESHOLDS, side="left")
        best = [float(suffix_max[i]) if i < len(recall) else 0.0 for i in first.tolist()]
        # The devkit accumulates ap + p/11, which makes a perfect score 1.0000000000000002;
        # an exact sum divided once gives 1.0 and differs from it by at most a rounding.
        return math.fsum(best) / 11
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def _concat(parts: list[Any], dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One array from per-image parts (tensors and/or arrays, already (n, *shape))."""
    if not parts:
        return np.zeros((0, *shape), dtype=dtype)
    if all(isinstance(p, torch.Tensor) for p in parts):
        with torch.no_grad():
            out = torch.cat(parts).cpu().numpy()
    else:
        out = np.concatenate([p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p for p in parts])
    return out.astype(dtype, copy=False)


def _gather(
    records: Sequence[Mapping[str, Any]], kind: str, fields: Sequence[tuple[str, Any, bool]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Concatenate the per-image arrays of ``records`` -> (image index (N,), {field: (N, ...)}).

    ``fields``: (key, dtype, required) besides ``boxes``; a missing optional field is zeros.
    The loop over images only checks shapes; the data is converted in one go per field.
    """
    counts = np.zeros(len(records), dtype=np.int64)
    parts: dict[str, list[Any]] = {"boxes": [], **{key: [] for key, _, _ in fields}}
    for index, record in enumerate(records):
        box = record.get("boxes")
        if box is None:
            raise ValueError(f"{kind} {index}: no 'boxes'")
        if not isinstance(box, torch.Tensor):
            box = np.asarray(box, dtype=np.float64)
        shape = tuple(box.shape)
        if len(shape) != 2 or shape[1] != 4:
            if 0 not in shape:
                raise ValueError(f"{kind} {index}: boxes must be (N, 4) xyxy, got shape {shape}")
            box = box.reshape(0, 4)
        n = box.shape[0]
        counts[index] = n
        parts["boxes"].append(box)
        for key, dtype, required in fields:
            value = record.get(key)
            if value is None:
                if required:
                    raise ValueError(f"{kind} {index}: no {key!r}")
                value = np.zeros(n, dtype=dtype)
            elif not isinstance(value, torch.Tensor):
                value = np.asarray(value)
            if value.ndim != 1:
                value = value.reshape(-1)
            if value.shape[0] != n:
                raise ValueError(f"{kind} {index}: {n} boxes but {value.shape[0]} {key}")
            parts[key].append(value)
    image = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    out = {"boxes": _concat(parts["boxes"], np.float64, (4,))}
    for key, dtype, _ in fields:
        out[key] = _concat(parts[key], dtype, ())
    return image, out


def _candidate_matches(
    det_key: np.ndarray, det_boxes: np.ndarray, gt_key: np.ndarray, gt_boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the ground truth of its (image, class) with maximal IoU.

    Only pairs that overlap (positive intersection width and height) count, as in the
    devkit; ties go to the ground truth that comes first. Boxes are continuous xyxy.

    Returns:
        (best IoU (N,) float64, -inf where nothing overlaps; index into the ground truths (N,), -1 there).
    """
    num_det = len(det_key)
    best_iou = np.full(num_det, -np.inf)
    best_gt = np.full(num_det, -1, dtype=np.int64)
    gt_order = np.argsort(gt_key, kind="stable")  # keeps annotation order within a key
    key_space = int(max(det_key.max(initial=-1), gt_key.max(initial=-1))) + 1
    if key_space <= 4 * (num_det + len(gt_key)) + 1_000_000:  # a dense table: O(1) lookups
        per_key = np.bincount(gt_key, minlength=key_space)
        counts = per_key[det_key]
        starts = (np.cumsum(per_key) - per_key)[det_key]
    else:
        sorted_keys = gt_key[gt_order]
        starts = np.searchsorted(sorted_keys, det_key, side="left")
        counts = np.searchsorted(sorted_keys, det_key, side="right") - starts
    total = int(counts.sum())
    if total == 0:
        return best_iou, best_gt
    # Every (detection, ground truth) pair sharing a key, grouped by detection.
    pair_det = np.repeat(np.arange(num_det), counts)
    offsets = np.cumsum(counts) - counts
    pair_gt = gt_order[starts[pair_det] + np.arange(total) - offsets[pair_det]]

    # The IoU of each pair, float64: (total, 1, 4) against (total, 1, 4) -> (total, 1, 1).
    d = torch.from_numpy(np.ascontiguousarray(det_boxes[pair_det], dtype=np.float64))
    g = torch.from_numpy(np.ascontiguousarray(gt_boxes[pair_gt], dtype=np.float64))
    pair_iou = box_iou(d[:, None], g[:, None])[:, 0, 0].numpy()
    # A positive IoU is the devkit's overlap test (positive intersection width and height):
    # the clamped intersection is positive exactly then, and the union is at least its area.
    overlap = pair_iou > 0
    iou = np.where(overlap, pair_iou, -np.inf)

    has_pairs = counts > 0
    best_iou[has_pairs] = np.maximum.reduceat(iou, offsets[has_pairs])
    at_best = overlap & (iou == best_iou[pair_det])
    first = np.flatnonzero(at_best)
    if first.size == 0:  # no pair overlaps at all
        return best_iou, best_gt
    first = first[np.concatenate(([True], pair_det[first][1:] != pair_det[first][:-1]))]
    best_gt[pair_det[first]] = pair_gt[first]
    return best_iou, best_gt


def evaluate_voc(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    *,
    inclusive_boxes: bool = True,
) -> dict[str, Any]:
    """PASCAL VOC average precision per class and its mean, by the devkit's rules.

    Args:
        detections: one dict per image: ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,),
            ``labels`` (N,) int; tensors, arrays or lists.
        ground_truths: one dict per image (same order): ``boxes`` (M, 4) xyxy pixels,
            ``labels`` (M,) int, optionally ``difficult`` (M,) bool.
        iou_threshold: a detection can be a true positive when its IoU with a ground
            truth is >= this (the devkit's ``ovmax>=VOCopts.minoverlap``).
        use_07_metric: True: VOC2007's 11-point AP; False: VOC2010+'s area under the
            monotone precision envelope (see `voc_ap`).
        inclusive_boxes: True (the default, the devkit's convention): boxes are
            inclusive pixel indices, as the numbers in VOC's XML files, measured with the
            devkit's +1 (width ``x2 - x1 + 1``). False: boxes are continuous corners, the
            form singleshot's readers and `predict` give; `evaluate_model` passes False.

    Box forms. singleshot's readers turn VOC's 1-based inclusive pixel indices
    (x1, y1, x2, y2) into continuous 0-based corners (x1 - 1, y1 - 1, x2, y2). The devkit
    measures inclusive boxes with a +1: width x2 - x1 + 1, intersection
    min(x2) - max(x1) + 1. On continuous corners those are exactly x2 - (x1 - 1) and
    min(x2) - max(x1 - 1): the +1 is already in the conversion. So inclusive inputs are
    first converted that way (x1 - 1, y1 - 1) and plain continuous IoU follows; with
    ``inclusive_boxes=False`` the conversion is skipped. Either way the IoU of a
    ground truth read from the XML and a detection equals, number for number, the
    devkit's on the XML's values.

    Rules (``VOCevaldet.m``): per class, detections of all images are taken in
    descending score order (ties keep the input order: image, then position). Each is
    compared with the ground truths of its image and class, difficult ones included,
    and takes the one of maximal IoU. If that IoU >= ``iou_threshold``: a difficult
    ground truth makes the detection ignored (neither true nor false positive); else it
    is a true positive if that ground truth is still unclaimed (and claims it), a false
    positive (duplicate) otherwise. Below the threshold, or with no overlapping ground
    truth, it is a false positive. Recall counts non-difficult ground truths only; a
    class with none is left out of ``ap`` and of ``map``.

    Returns:
        ``ap``: {label: AP}, ``map``: their mean (nan if no class has ground truth),
        ``curves``: {label: {"recall", "precision", "scores": (K,) float64 ndarrays}} (one
        point per non-ignored detection, in score order), ``num_ground_truth``: {label:
        non-difficult count}, ``num_detections``: {label: count}, ``true_positives``:
        {label: count}, ``metric``: "voc07" or "voc12", ``iou_threshold``.
    """
    det_image, det, gt_image, gt = _gather_inputs(detections, ground_truths, inclusive_boxes)
    order, true_positive, kept = _ranked_outcomes(det_image, det, gt_image, gt, iou_threshold)
    labels_sorted = det["labels"][order]
    scores_sorted = det["scores"][order]

    classes, counts = np.unique(gt["labels"][~gt["difficult"]], return_counts=True)
    positives = dict(zip(classes.tolist(), counts.tolist()))
    result: dict[str, Any] = {
        "ap": {},
        "curves": {},
        "num_ground_truth": {},
        "num_detections": {},
        "true_positives": {},
        "metric": "voc07" if use_07_metric else "voc12",
        "iou_threshold": float(iou_threshold),
    }
    for label, num_positive in positives.items():
        lo, hi = np.searchsorted(labels_sorted, [label, label + 1])
        keep = kept[lo:hi]
        _add_class(result, label, num_positive, true_positive[lo:hi][keep], scores_sorted[lo:hi][keep],
                   int(hi - lo), use_07_metric)  # fmt: skip
    aps = list(result["ap"].values())
    result["map"] = float(np.mean(aps)) if aps else float("nan")
    return result


def _gather_inputs(
    detections: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]], inclusive_boxes: bool
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(detection image indices, detection arrays, ground-truth image indices, ground-truth arrays),
    checked; boxes (N, 4) float64 as continuous corners (inclusive ones moved by -1 at x1, y1)."""
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth")
    det_image, det = _gather(
        detections, "detections of image", [("scores", np.float64, True), ("labels", np.int64, True)]
    )
    gt_image, gt = _gather(
        ground_truths, "ground truth of image", [("labels", np.int64, True), ("difficult", bool, False)]
    )
    for name, labels in (("detection", det["labels"]), ("ground-truth", gt["labels"])):
        if labels.size and labels.min() < 0:
            raise ValueError(f"negative {name} label {int(labels.min())}")
    if not np.all(np.isfinite(det["scores"])):
        raise ValueError("detection scores must be finite")
    if inclusive_boxes:
        for boxes in (det["boxes"], gt["boxes"]):
            boxes[:, :2] -= 1.0
    return det_image, det, gt_image, gt


def _ranked_outcomes(
    det_image: np.ndarray,
    det: dict[str, np.ndarray],
    gt_image: np.ndarray,
    gt: dict[str, np.ndarray],
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detections ranked by (label, descending score, input order), and per rank whether
    it is a true positive and whether it counts (not ignored on a difficult ground truth).

    Returns:
        (order (N,) indices into the detections, true_positive (N,) bool, kept (N,) bool).
    """
    num_labels = int(max(det["labels"].max(initial=0), gt["labels"].max(initial=0))) + 1
    best_iou, best_gt = _candidate_matches(
        det_image * num_labels + det["labels"],
        det["boxes"],
        gt_image * num_labels + gt["labels"],
        gt["boxes"],
    )
    matched = best_iou >= iou_threshold
    on_difficult = np.zeros(len(best_gt), dtype=bool)
    on_difficult[matched] = gt["difficult"][best_gt[matched]]
    ignored = matched & on_difficult
    claims = matched & ~ignored

    # Per class, descending score; stable sorts keep input order on ties.
    order = np.argsort(-det["scores"], kind="stable")
    labels = det["labels"][order]
    if num_labels <= np.iinfo(np.int16).max:
        labels = labels.astype(np.int16)  # numpy's stable sort of small ints is a radix sort
    order = order[np.argsort(labels, kind="stable")]
    claims_sorted = claims[order]
    claim_at = np.flatnonzero(claims_sorted)
    _, first_claim = np.unique(best_gt[order][claim_at], return_index=True)
    true_positive = np.zeros(len(order), dtype=bool)
    true_positive[claim_at[first_claim]] = True
    return order, true_positive, ~ignored[order]


def _add_class(
    result: dict[str, Any],
    label: int,
    num_positive: int,
    true_positive: np.ndarray,
    scores: np.ndarray,
    num_detections: int,
    use_07_metric: bool,
) -> None:
    """One class's AP, curve and counts into ``result``, from its counted detections in rank
    order: ``true_positive`` (K,) bool and ``scores`` (K,) float64."""
    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.arange(1, len(tp) + 1, dtype=np.float64) - tp
    recall = tp / float(num_positive)
    precision = tp / (tp + fp)
    result["ap"][label] = voc_ap(recall, precision, use_07_metric)
    result["curves"][label] = {"recall": recall, "precision": precision, "scores": scores}
    result["num_ground_truth"][label] = num_positive
    result["num_detections"][label] = num_detections
    result["true_positives"][label] = int(tp[-1]) if len(tp) else 0
