"""The NMS that detection uses on CUDA (`padded_grouped_nms`, all groups at once) keeps the same
boxes in the same order as the CPU path (torchvision's kernel once per group), ties and IoUs
equal to the threshold included: the rule is tested here, on the CPU."""

import pytest
import torch
from torchvision.ops import batched_nms

from singleshot import postprocess
from singleshot.postprocess import grouped_nms, padded_grouped_nms


def grid_case(seed):
    """Boxes on a 0.1 grid (many IoUs exactly 1/3, 1/2, ...; some reaching outside [0, 1]) in
    groups with ids in the thousands, scores from five values (many ties)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 60, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
    groups = torch.repeat_interleave(torch.arange(len(sizes)) * 37 + 1000, sizes)
    xy = torch.randint(0, 12, (len(groups), 2), generator=g).float() / 10 - 0.1
    wh = torch.randint(1, 8, (len(groups), 2), generator=g).float() / 10
    scores = torch.randint(1, 6, (len(groups),), generator=g).float() / 6
    return torch.cat([xy, xy + wh], 1), scores, groups


@pytest.mark.parametrize("threshold", [0.45, 0.5, 1 / 3])
def test_all_groups_at_once_keep_what_the_per_group_kernel_keeps(threshold):
    offset_differs = 0
    for seed in range(60):
        boxes, scores, groups = grid_case(seed)
        expected = grouped_nms(boxes, scores, groups, threshold)
        assert torch.equal(padded_grouped_nms(boxes, scores, groups, threshold), expected), seed
        kept = batched_nms(boxes, scores, groups, threshold)
        offset_differs += not torch.equal(kept.sort().values, expected.sort().values)
    # what the rule replaces: batched_nms's coordinate offsets change decisions on such data
    assert offset_differs > 0


def test_groups_need_not_be_adjacent_and_chunks_join_up(monkeypatch):
    boxes, scores, groups = grid_case(7)
    expected = grouped_nms(boxes, scores, groups, 0.45)
    shuffle = torch.randperm(len(groups), generator=torch.Generator().manual_seed(1))
    got = shuffle[padded_grouped_nms(boxes[shuffle], scores[shuffle], groups[shuffle], 0.45)]
    # the same set; on equal scores the order follows the input, which the shuffle changed
    assert torch.equal(got.sort().values, expected.sort().values)
    assert torch.equal(scores[got], scores[expected])
    monkeypatch.setattr(postprocess, "_IOU_CHUNK", 3 * 59 * 59)  # three groups per IoU block
    assert torch.equal(padded_grouped_nms(boxes, scores, groups, 0.45), expected)
    assert len(padded_grouped_nms(boxes[:0], scores[:0], groups[:0], 0.45)) == 0
