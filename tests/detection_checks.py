"""Comparing two runs' detections without tripping over rounding: a score threshold in a gap
of the scores, and labels equal with scores and boxes within stated tolerances."""

import torch


def gap_threshold(results, low=3, high=40):
    """A score threshold mid-way in the widest gap between the ranks ``low`` and ``high`` of
    any of ``results`` (detections sorted by score), so that no detection sits within
    rounding of it."""
    found = []
    for result in results:
        window = result["scores"][low:high]
        gaps = window[:-1] - window[1:]
        k = int(gaps.argmax())
        found.append((float(gaps[k]), float(window[k] + window[k + 1]) / 2))
    gap, threshold = max(found)
    assert gap > 1e-3
    return threshold


def assert_same_detections(got, expected, box_tol, score_tol, at_least=3):
    """Per image: the same labels in the same order, scores and boxes within the tolerances,
    and at least ``at_least`` detections in ``expected`` (so there is something to compare)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert len(b["scores"]) >= at_least
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(a["scores"], b["scores"], atol=score_tol, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=box_tol, rtol=0)
