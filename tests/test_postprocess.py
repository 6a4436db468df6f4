import pytest
import torch

from reference import reference_detect
from singleshot import postprocess
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.postprocess import class_probabilities, detect, select_top_k_per_group
from tolerances import rounding


def random_outputs(seed, batch=2, num_priors=400, num_classes=5, sparse=False):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat(
        [torch.rand(num_priors, 2, generator=g), 0.05 + 0.3 * torch.rand(num_priors, 2, generator=g)], 1
    )
    loc = 0.5 * torch.randn(batch, num_priors, 4, generator=g)
    logits = torch.randn(batch, num_priors, num_classes, generator=g)
    if sparse:  # trained-like: background wins almost everywhere
        logits[..., 0] += 6
    return loc, logits.softmax(-1), priors


def as_tuples(detection):
    return [
        (s, int(lab), b)
        for s, lab, b in zip(detection["scores"].tolist(), detection["labels"], detection["boxes"].tolist())
    ]


@pytest.mark.parametrize(
    "top_k, max_det, clip, sparse",
    # (200, 50, True, True): no row of the sparse scores holds more than 200 candidates, so
    # the k-th-score pre-filter is skipped; the dense rows and top_k 30 and 5 take it
    [
        (200, None, False, False),
        (400, 200, True, False),
        (30, 50, False, True),
        (5, 7, True, False),
        (200, 50, True, True),
    ],
)
def test_detect_equals_per_class_loop(top_k, max_det, clip, sparse):
    loc, scores, priors = random_outputs(top_k, sparse=sparse)
    ours = detect(loc, scores, priors, 0.01, 0.45, top_k, max_det, clip=clip)
    reference = reference_detect(loc, scores, priors, 0.01, 0.45, top_k, max_det, clip)
    for det, ref in zip(ours, reference):
        got = as_tuples(det)
        assert len(got) == len(ref) > 0
        for (s, lab, box), (rs, rlab, rbox) in zip(got, ref):
            assert s == rs and lab == rlab
            # the same decode on other tensor shapes: exp may run scalar (libm) instead of
            # vectorised (SLEEF), an ulp apart; carried through x size and +- size / 2 at <= 1.5
            assert box == pytest.approx(rbox, abs=rounding(1.5, ops=4))
        assert det["labels"].dtype == torch.int64
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_detect_matches_torchvision_postprocess_live():
    from torchvision.models.detection import ssd300_vgg16

    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=5)
    loc, scores, priors = random_outputs(5, batch=2, num_priors=500, num_classes=5)
    logits = scores.log()
    anchors = cxcywh_to_xyxy(priors) * 300
    expected = tv.postprocess_detections(
        {"bbox_regression": loc, "cls_logits": logits}, [anchors, anchors], [(300, 300), (300, 300)]
    )
    ours = detect(
        loc, logits.softmax(-1), priors, 0.01, 0.45, pre_nms_top_k=400, max_detections=200, clip=True
    )
    for det, ref in zip(ours, expected):
        assert det["labels"].tolist() == ref["labels"].tolist()
        assert torch.equal(det["scores"], ref["scores"])  # the same softmax of the same logits
        # torchvision decodes in pixels (anchor sides and centres, dx * w + cx, exp(dw) * w,
        # the corners), we in fractions, then x 300: each side <= 4 roundings at <= 300
        torch.testing.assert_close(det["boxes"] * 300, ref["boxes"], atol=rounding(300, ops=8), rtol=0)


def test_detect_empty_and_threshold():
    loc, scores, priors = random_outputs(3)
    out = detect(loc, scores, priors, score_threshold=1.0)
    assert len(out) == 2 and all(d["boxes"].shape == (0, 4) for d in out)
    out = detect(loc, scores, priors, score_threshold=0.3)
    for det, image_scores in zip(out, scores):
        assert len(det["scores"]) > 0  # else the checks below hold vacuously
        assert (det["scores"] > 0.3).all()
        # every (prior, class) above the threshold survives unless NMS or the caps removed it
        assert len(det["scores"]) <= int((image_scores[:, 1:] > 0.3).sum())
        assert ((det["labels"] >= 1) & (det["labels"] <= 4)).all()


def test_select_top_k_per_group():
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.8])
    groups = torch.tensor([2, 0, 2, 2, 0, 1])
    assert select_top_k_per_group(scores, groups, 2).tolist() == [1, 4, 5, 3, 0]
    assert select_top_k_per_group(scores, groups, 1).tolist() == [1, 5, 3]
    assert select_top_k_per_group(scores[:0], groups[:0], 3).numel() == 0


def test_grouped_nms_equals_batched_nms():
    from torchvision.ops import batched_nms

    from singleshot.postprocess import grouped_nms

    g = torch.Generator().manual_seed(9)
    groups = torch.randint(0, 12, (600,), generator=g).sort().values
    boxes = cxcywh_to_xyxy(torch.cat([torch.rand(600, 2, generator=g), 0.1 + 0.3 * torch.rand(600, 2)], 1))
    scores = torch.rand(600, generator=g)
    expected = batched_nms(boxes, scores, groups, 0.45)
    assert torch.equal(grouped_nms(boxes, scores, groups, 0.45), expected)
    assert grouped_nms(boxes[:0], scores[:0], groups[:0], 0.45).numel() == 0


@pytest.mark.parametrize("cap", [1, 4, 10, 1000])
def test_capped_grouped_nms_equals_full_nms_then_cap(cap):
    """Boxes crowded around a few centres, so NMS removes most of them and the prefix
    has to grow; scores rounded to produce ties within and across classes."""
    from singleshot.postprocess import capped_grouped_nms, grouped_nms, rank_in_runs

    g = torch.Generator().manual_seed(cap)
    n = 3000
    images = torch.randint(0, 3, (n,), generator=g)
    classes = torch.randint(0, 2, (n,), generator=g)
    groups = images * 2 + classes
    centres = torch.tensor([[0.3, 0.3], [0.7, 0.6], [0.5, 0.5]])[torch.randint(0, 3, (n,), generator=g)]
    jitter = 0.02 * torch.randn(n, 2, generator=g)
    boxes = cxcywh_to_xyxy(torch.cat([centres + jitter, torch.full((n, 2), 0.2)], 1))
    scores = (torch.rand(n, generator=g) * 20).round() / 20
    order = torch.argsort(groups, stable=True)
    boxes, scores, groups, images = boxes[order], scores[order], groups[order], images[order]

    full = grouped_nms(boxes, scores, groups, 0.45)
    full = full[torch.argsort(images[full], stable=True)]
    expected = full[rank_in_runs(images[full]) < cap]
    got = capped_grouped_nms(boxes, scores, groups, images, 0.45, cap)
    assert torch.equal(got, expected)
    # Some kept box lies beyond an image's first 2 x cap candidates: the prefix had to grow.
    by_score = torch.argsort(scores, descending=True, stable=True)
    by_score = by_score[torch.argsort(images[by_score], stable=True)]
    rank = torch.empty_like(by_score)
    rank[by_score] = rank_in_runs(images[by_score])
    assert int(rank[expected].max()) >= 2 * cap or cap in (1, 1000)


@pytest.mark.parametrize("top_k", [3, 40])
def test_the_kth_score_prefilter_changes_nothing_even_with_ties(monkeypatch, top_k):
    """Scores on a coarse grid tie at every k-th place; the pre-filter by each row's k-th best
    keeps all the tied scores, so the exact top-k picks what it picks from every candidate."""
    loc, scores, priors = random_outputs(11, num_priors=300)
    scores = (scores * 20).round() / 20  # multiples of 0.05: hundreds of ties per class
    assert int((scores[..., 1:] == 0.05).sum()) > 100
    ours = detect(loc, scores, priors, 0.01, 0.45, top_k, None)
    monkeypatch.setattr(postprocess, "_candidates", lambda foreground, threshold, k: foreground > threshold)
    unfiltered = detect(loc, scores, priors, 0.01, 0.45, top_k, None)
    for det, ref in zip(ours, unfiltered):
        assert len(det["scores"]) > 0
        assert all(torch.equal(det[key], ref[key]) for key in ("boxes", "scores", "labels"))


def test_the_prefilter_is_skipped_only_where_no_row_has_more_than_k_candidates():
    g = torch.Generator().manual_seed(13)
    foreground = torch.rand(2, 3, 500, generator=g) * (torch.rand(2, 3, 500, generator=g) < 0.1)
    above = foreground > 0.01
    counts = above.sum(-1)
    assert 30 < int(counts.max()) <= 80  # every row at most k = 80 candidates
    assert torch.equal(postprocess._candidates(foreground, 0.01, 80), above)
    foreground[1, 2] = torch.rand(500, generator=g)  # one row of ~490 candidates: its top 80 stay
    above = foreground > 0.01
    chosen = postprocess._candidates(foreground, 0.01, 80)
    assert int(above[1, 2].sum()) > 400 and int(chosen[1, 2].sum()) == 80
    best = foreground[1, 2].topk(80).indices
    assert torch.equal(chosen[1, 2].nonzero().flatten(), best.sort().values)
    chosen[1, 2], above[1, 2] = False, False
    assert torch.equal(chosen, above)  # the other rows keep every candidate


def test_a_nan_score_is_never_a_candidate_and_hides_no_other():
    loc, scores, priors = random_outputs(12, num_priors=300)
    poisoned = scores.clone()
    poisoned[0, :50, 2] = float("nan")  # more NaNs than the top-k takes, in one class of image 0
    cleaned = scores.clone()
    cleaned[0, :50, 2] = 0.0
    for got, expected in zip(detect(loc, poisoned, priors, 0.01, 0.45, 20, 100),
                             detect(loc, cleaned, priors, 0.01, 0.45, 20, 100)):  # fmt: skip
        assert torch.equal(got["labels"], expected["labels"])
        assert torch.equal(got["scores"], expected["scores"])
        assert (got["labels"] == 2).any()


@pytest.mark.parametrize("num_classes", [2, 6, 15, 16, 21, 91])
def test_class_probabilities_are_the_softmax_over_the_classes(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    conf = 6 * torch.randn(3, 700, num_classes, generator=g)
    conf[0, :20] += 500.0  # far beyond exp's range: the softmax shifts by the max
    probabilities = class_probabilities(conf)
    assert probabilities.shape == conf.shape
    exact = torch.softmax(conf.double(), dim=-1)
    torch.testing.assert_close(probabilities.double(), exact, atol=3e-7, rtol=1e-6)
    if num_classes < 16:  # across the priors: PyTorch's kernel along a short last dimension is slow
        assert torch.equal(probabilities, torch.softmax(conf.transpose(1, 2), dim=1).transpose(1, 2))
    else:
        assert torch.equal(probabilities, torch.softmax(conf, dim=-1))
