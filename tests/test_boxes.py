import math

import pytest
import torch

from reference import reference_match
from singleshot import boxes
from singleshot.boxes import cxcywh_to_xyxy, decode, encode, iou, match, match_batch
from tolerances import rounding


def test_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    expected = torch.tensor([[1 / 7, 1 / 4, 0.0, 1.0], [4 / 16, 1 / 16, 0.0, 4 / 16]])
    # integer areas, exact: the only rounding is the final division, as in 1 / 7 itself
    assert torch.equal(iou(a, b), expected)


def test_iou_batched_equals_unbatched():
    g = torch.Generator().manual_seed(0)
    a = cxcywh_to_xyxy(torch.rand(3, 5, 4, generator=g))
    b = cxcywh_to_xyxy(torch.rand(7, 4, generator=g))
    batched = iou(a, b)
    for i in range(3):
        assert torch.equal(batched[i], iou(a[i], b))


def test_encode_hand_computed_and_round_trip():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.45, 0.4, 0.65, 0.6]])  # centre (0.55, 0.5), size (0.2, 0.2)
    # A centre offset is a difference of coordinates <= 1 (the inputs' rounding to float32,
    # the sum, the difference: <= 4 roundings at magnitude 1) divided by 0.1 * 0.2; the
    # log-size offsets are smaller (log of a ratio, / 0.2)
    tol = rounding(1 / 0.02, ops=4)
    torch.testing.assert_close(encode(gt, prior), torch.tensor([[2.5, 0.0, 0.0, 0.0]]), atol=tol, rtol=0)
    gt = torch.tensor([[0.4, 0.4, 0.8, 0.5]])  # centre (0.6, 0.45), size (0.4, 0.1)
    expected = [0.1 / 0.02, -0.05 / 0.02, math.log(2.0) / 0.2, math.log(0.5) / 0.2]
    torch.testing.assert_close(encode(gt, prior), torch.tensor([expected]), atol=tol, rtol=0)

    g = torch.Generator().manual_seed(1)
    priors = torch.cat([torch.rand(50, 2, generator=g), 0.05 + torch.rand(50, 2, generator=g)], 1)
    truth = cxcywh_to_xyxy(
        torch.cat([torch.rand(50, 2, generator=g), 0.05 + torch.rand(50, 2, generator=g)], 1)
    )
    # Coordinates <= 1.5: encode's centre (4 roundings) and decode's (2), the size's ratio,
    # log, exp and product (relative, ~4), the corners' +- size / 2 (2): <= 12 roundings
    # at 1.5 (dividing by 0.1 * w_prior and multiplying back scales the error both ways)
    tol = rounding(1.5, ops=12)
    torch.testing.assert_close(decode(encode(truth, priors), priors), truth, atol=tol, rtol=0)
    batched = torch.stack([truth, truth.flip(0)])
    torch.testing.assert_close(decode(encode(batched, priors), priors), batched, atol=tol, rtol=0)


def test_decode_clamps_wild_sizes():
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    out = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), prior)
    assert torch.isfinite(out).all()
    # the clamp's float32 log(62.5) (error <= 4.2 EPS/2, relative after exp), exp, x the
    # prior's size, the corners (centre +- size / 2, <= 3.6) and their difference: <= 10
    # roundings at 6.25
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(0.1 * 1000 / 16, abs=rounding(6.25, ops=10))


# Hand-made priors (cxcywh) for the matching cases.
PRIORS = torch.tensor(
    [
        [0.25, 0.25, 0.5, 0.5],  # 0: top-left quarter
        [0.75, 0.25, 0.5, 0.5],  # 1: top-right quarter
        [0.5, 0.5, 1.0, 1.0],  # 2: whole image
        [0.25, 0.5, 0.5, 1.0],  # 3: left half
        [0.25, 0.5, 0.5, 1.0],  # 4: left half again (exact duplicate of 3)
        [0.9, 0.9, 0.1, 0.1],  # 5: small box bottom-right
    ]
)


def test_match_tiny_box_keeps_its_best_prior_below_threshold():
    gt = torch.tensor([[0.88, 0.88, 0.9, 0.9]])  # IoU with prior 5 = 0.0004 / 0.01 = 0.04
    loc, labels = match(gt, torch.tensor([3]), PRIORS)
    assert labels.tolist() == [0, 0, 0, 0, 0, 3]
    expected = reference_match(gt, torch.tensor([3]), PRIORS)
    assert torch.equal(loc[5], expected[0][5])  # the reference's arithmetic, bit for bit


def test_match_whole_image_and_threshold_equality_is_positive():
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    loc, labels = match(gt, torch.tensor([1]), PRIORS)
    # prior 2 is identical (IoU 1); the left halves have IoU exactly 0.5 -> positive;
    # the quarters 0.25 -> background
    assert labels.tolist() == [0, 0, 1, 1, 1, 0]
    assert torch.equal(loc[2], torch.zeros(4))  # equal centres, log(1) = 0: exact
    # dyadic coordinates; 0.1 * 0.5 and the quotient, or log(2) and / 0.2: <= 4 roundings at 5
    expected = [0.25 / 0.05, 0.0, math.log(2) / 0.2, 0.0]
    assert loc[3].tolist() == pytest.approx(expected, abs=rounding(5, ops=4))


def test_match_first_index_wins_exact_ties_for_best_prior():
    # best IoU 0.24 / 0.5 = 0.48 with priors 3 and 4 (identical): only the first is forced positive
    gt = torch.tensor([[0.1, 0.1, 0.4, 0.9]])
    _, labels = match(gt, torch.tensor([2]), PRIORS)
    assert labels[3].item() == 2 and labels[4].item() == 0


def test_match_later_ground_truth_wins_a_shared_best_prior():
    # both boxes have prior 5 as their best prior (IoU < 0.5): the later one takes it
    gt = torch.tensor([[0.86, 0.86, 0.9, 0.9], [0.9, 0.9, 0.94, 0.94]])
    loc, labels = match(gt, torch.tensor([1, 2]), PRIORS)
    assert labels.tolist() == [0, 0, 0, 0, 0, 2]
    ref_loc, ref_labels = reference_match(gt, torch.tensor([1, 2]), PRIORS)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(loc[5], ref_loc[5])


def test_match_box_below_threshold_everywhere_still_matched_once():
    gt = torch.tensor([[0.3, 0.05, 0.7, 0.2]])
    _, labels = match(gt, torch.tensor([4]), PRIORS)
    assert int((labels > 0).sum()) == 1


def test_match_reproduces_reference_bit_for_bit_on_random_data():
    g = torch.Generator().manual_seed(3)
    priors = torch.cat([torch.rand(300, 2, generator=g), 0.02 + 0.5 * torch.rand(300, 2, generator=g)], 1)
    priors = priors.clamp(0, 1)
    for n in (1, 4, 9):
        centre = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
        size = 0.05 + 0.4 * torch.rand(n, 2, generator=g)
        truths = cxcywh_to_xyxy(torch.cat([centre, size], 1))
        labels = torch.randint(1, 5, (n,), generator=g)
        loc, conf = match(truths, labels, priors)
        ref_loc, ref_conf = reference_match(truths, labels, priors)
        assert torch.equal(conf, ref_conf)
        assert torch.equal(loc, ref_loc)


def test_match_batch_equals_per_image_and_handles_empty_images():
    g = torch.Generator().manual_seed(4)
    priors = torch.cat([torch.rand(200, 2, generator=g), 0.05 + 0.3 * torch.rand(200, 2, generator=g)], 1)
    gts = [
        cxcywh_to_xyxy(
            torch.cat([0.3 + 0.4 * torch.rand(k, 2, generator=g), 0.1 + 0.2 * torch.rand(k, 2)], 1)
        )
        for k in (3, 0, 6, 1)
    ]
    labels = [torch.randint(1, 4, (len(b),), generator=g) for b in gts]
    loc_t, labels_t = match_batch(gts, labels, priors)
    assert loc_t.shape == (4, 200, 4) and labels_t.shape == (4, 200)
    assert (labels_t[1] == 0).all() and torch.isfinite(loc_t).all()
    for i in (0, 2, 3):
        loc, lab = match(gts[i], labels[i], priors)
        assert torch.equal(lab, labels_t[i])
        assert torch.equal(loc[lab > 0], loc_t[i][lab > 0])


@pytest.mark.parametrize(
    "bad",
    [[0.5, 0.5, 0.5, 0.8], [0.6, 0.1, 0.5, 0.8], [0.1, 0.1, float("nan"), 0.8], [0.1, 0.9, 0.4, 0.2]],
)
def test_degenerate_ground_truth_is_rejected_with_image_and_box(bad):
    good = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    with pytest.raises(ValueError, match=r"image 1 .*box 1"):
        match_batch(
            [good, torch.cat([good, torch.tensor([bad])])], [torch.tensor([1]), torch.tensor([1, 2])], PRIORS
        )


def test_check_boxes_accepts_empty():
    boxes.check_boxes(torch.zeros(0, 4))
