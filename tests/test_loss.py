import pytest
import torch

from reference import reference_match
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.loss import MultiBoxLoss, mine_hard_negatives
from tolerances import reduction, rounding


def loss_tolerances(loc, conf):
    """Relative tolerances of the float32 losses against the float64 reference.

    Each loss is a float32 sum of non-negative terms (so the sum of their absolute values
    is the loss itself): 4 smooth-L1 terms per positive prior, <= one cross-entropy term
    per prior. The sum: reduction(K, 1) relative; each term's own arithmetic (difference
    and square; log-softmax's max, exp, sum, log and difference, at the magnitude of the
    logits, which here is that of the terms): <= 6 roundings more.
    """
    batch, priors = loc.shape[:2]
    return (
        reduction(4 * batch * priors, 1.0) + rounding(1.0, ops=6),
        reduction(batch * priors, 1.0) + rounding(1.0, ops=6),
    )


def reference_loss(loc, conf, priors, targets, ratio=3):
    """Slow, obviously-correct MultiBox loss: per image, per prior, in float64."""
    num_priors = priors.shape[0]
    total_pos, loss_l, loss_c = 0, 0.0, 0.0
    for i, target in enumerate(targets):
        if len(target["boxes"]):
            loc_t, labels = reference_match(target["boxes"], target["labels"], priors)
        else:
            loc_t, labels = torch.zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.int64)
        pos = (labels > 0).tolist()
        logits = conf[i].double()
        log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        for j in range(num_priors):
            if pos[j]:
                for d in (loc[i, j].double() - loc_t[j].double()).abs().tolist():
                    loss_l += 0.5 * d * d if d < 1 else d - 0.5
                loss_c -= log_probs[j, labels[j]].item()
        num_pos = sum(pos)
        negatives = sorted((j for j in range(num_priors) if not pos[j]), key=lambda j: log_probs[j, 0].item())
        for j in negatives[: min(ratio * num_pos, num_priors - 1)]:
            loss_c -= log_probs[j, 0].item()
        total_pos += num_pos
    divisor = max(total_pos, 1)
    return loss_l / divisor, loss_c / divisor


def make_case(seed, counts, num_priors=120, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat(
        [torch.rand(num_priors, 2, generator=g), 0.05 + 0.4 * torch.rand(num_priors, 2, generator=g)], 1
    )
    targets = []
    for n in counts:
        centre = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
        size = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        targets.append(
            {
                "boxes": cxcywh_to_xyxy(torch.cat([centre, size], 1)),
                "labels": torch.randint(1, num_classes, (n,), generator=g),
            }
        )
    loc = torch.randn(len(counts), num_priors, 4, generator=g)
    conf = 2 * torch.randn(len(counts), num_priors, num_classes, generator=g)
    return loc, conf, priors, targets


@pytest.mark.parametrize("counts", [(2, 1, 3), (0, 4), (5,)])
def test_loss_matches_slow_reference(counts):
    loc, conf, priors, targets = make_case(sum(counts), counts)
    loss_l, loss_c = MultiBoxLoss(4)(loc, conf, priors, targets)
    ref_l, ref_c = reference_loss(loc, conf, priors, targets)
    tol_l, tol_c = loss_tolerances(loc, conf)
    assert loss_l.item() == pytest.approx(ref_l, rel=tol_l)
    assert loss_c.item() == pytest.approx(ref_c, rel=tol_c)


def test_one_huge_logit_does_not_disturb_other_rows():
    loc, conf, priors, targets = make_case(7, (2, 3))
    conf[0, 5, 2] = 1e4  # ssd.pytorch's batch-global log-sum-exp would send every other row to -inf
    loss_l, loss_c = MultiBoxLoss(4)(loc, conf, priors, targets)
    ref_l, ref_c = reference_loss(loc, conf, priors, targets)
    assert torch.isfinite(loss_c)
    # the 1e4 logit's rounding (6 at 1e4) is a relative 1e-6 of this loss (> 1000): within
    tol_l, tol_c = loss_tolerances(loc, conf)
    assert loss_c.item() == pytest.approx(ref_c, rel=tol_c)
    assert loss_l.item() == pytest.approx(ref_l, rel=tol_l)


def test_batch_without_objects_gives_finite_zero_loss_and_gradients():
    loc, conf, priors, _ = make_case(1, (1, 1))
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    loss_l, loss_c = MultiBoxLoss(4)(loc, conf, priors, empty)
    assert loss_l.item() == 0.0 and loss_c.item() == 0.0
    (loss_l + loss_c).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(conf.grad).all()


def test_gradient_only_reaches_positives_and_mined_negatives():
    loc, conf, priors, targets = make_case(11, (1,))
    conf.requires_grad_(True)
    loc.requires_grad_(True)
    criterion = MultiBoxLoss(4)
    loss_l, loss_c = criterion(loc, conf, priors, targets)
    (loss_l + loss_c).backward()
    touched = (conf.grad[0].abs().sum(1) > 0).sum().item()
    loc_touched = (loc.grad[0].abs().sum(1) > 0).sum().item()
    assert loc_touched >= 1
    assert touched == 4 * loc_touched  # positives plus 3 negatives per positive


def test_mining_counts_and_cap():
    background = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2]])
    positive = torch.tensor([[False, True, False, False, False, False]])
    negative = mine_hard_negatives(background, positive, 3)
    assert negative.tolist() == [[False, False, True, True, True, False]]
    # ratio x positives above P - 1 is capped at P - 1 (ssd.pytorch); positives are never negatives
    negative = mine_hard_negatives(background, positive, 10)
    assert negative.sum().item() == 5 - 0 and not (negative & positive).any()


def test_mining_takes_ratio_times_positives_per_image_from_the_non_positives():
    # 12 priors, 3 images: 2 positives (the 2nd and 3rd highest losses), 1 positive (the highest), none
    background = torch.tensor(
        [
            [0.50, 0.10, 0.95, 0.30, 0.80, 0.20, 0.70, 0.05, 0.60, 0.40, 0.90, 0.15],
            [0.20, 0.90, 0.10, 0.80, 0.30, 0.70, 0.40, 0.99, 0.60, 0.50, 0.05, 0.35],
            [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.05, 0.95, 0.85],
        ]
    )
    positive = torch.zeros(3, 12, dtype=torch.bool)
    positive[0, [2, 4]] = True
    positive[1, 7] = True
    negative = mine_hard_negatives(background, positive, 3)
    # image 0: 6 of its 10 non-positives, by loss 0.90 0.70 0.60 0.50 0.40 0.30 (0.20 and below left out)
    # image 1: 3 of 11: 0.90 0.80 0.70 (0.60 left out); image 2: no positive, no negative
    assert [row.nonzero().flatten().tolist() for row in negative] == [[0, 3, 6, 8, 9, 10], [1, 3, 5], []]


def test_degenerate_box_and_bad_labels_raise():
    loc, conf, priors, targets = make_case(2, (1, 2))
    targets[1]["boxes"][1] = torch.tensor([0.5, 0.5, 0.4, 0.9])
    with pytest.raises(ValueError, match=r"image 1 of the batch.*box 1"):
        MultiBoxLoss(4)(loc, conf, priors, targets)
    loc, conf, priors, targets = make_case(2, (1, 2))
    targets[0]["labels"][0] = 4
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        MultiBoxLoss(4)(loc, conf, priors, targets)
    with pytest.raises(ValueError, match="classes"):
        MultiBoxLoss(5)(loc, conf, priors, targets)
