import math

import numpy as np
import pytest
import torch

from reference import CAFFE_PRIOR_PARAMETERS, caffe_count_outside, caffe_prior_boxes
from singleshot.presets import PRESETS
from singleshot.priors import PriorConfig, count_outside, generate_priors
from tolerances import rounding

# Priors are computed in float64 and rounded once to float32 (<= EPS/2 relative); the
# expectations here are float64. Values are <= 1.5 (unclipped sizes).
PRIOR_TOL = rounding(1.5)


def priors_of(name, clip=None):
    return generate_priors(PRESETS[name].prior_config, clip=clip)


@pytest.mark.parametrize(
    "name, expected",
    [("ssd300_voc", 8732), ("ssd300_coco", 8732), ("ssd512_voc", 24564), ("ssd512_coco", 24564)],
)
def test_prior_counts(name, expected):
    config = PRESETS[name].prior_config
    assert config.num_priors == expected
    assert priors_of(name).shape == (expected, 4)


def test_ssd300_voc_hand_computed_priors():
    p = priors_of("ssd300_voc")
    r2 = math.sqrt(2.0)
    # level 0, cell (row 0, col 0): centre 4 px of 300, sizes 30, sqrt(30*60), 30*sqrt2 x 30/sqrt2, swapped
    c = 4 / 300
    expected = [
        [c, c, 0.1, 0.1],
        [c, c, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300],
        [c, c, 0.1 * r2, 0.1 / r2],
        [c, c, 0.1 / r2, 0.1 * r2],
    ]
    torch.testing.assert_close(p[:4], torch.tensor(expected), rtol=0, atol=PRIOR_TOL)
    # level 0, row 0, col 1 comes next (columns run fastest), then row 1 starts at 38 * 4
    torch.testing.assert_close(p[4, :2], torch.tensor([12 / 300, 4 / 300]), rtol=0, atol=PRIOR_TOL)
    torch.testing.assert_close(p[38 * 4, :2], torch.tensor([4 / 300, 12 / 300]), rtol=0, atol=PRIOR_TOL)
    # level 1 starts after 38*38*4 boxes: 6 boxes, centre 8 px, min 60 max 111, ratios 2 and 3
    q = p[5776:5782]
    s = 0.2
    expected = [
        [8 / 300, 8 / 300, s, s],
        [8 / 300, 8 / 300, math.sqrt(60 * 111) / 300, math.sqrt(60 * 111) / 300],
        [8 / 300, 8 / 300, s * r2, s / r2],
        [8 / 300, 8 / 300, s / r2, s * r2],
        [8 / 300, 8 / 300, s * math.sqrt(3), s / math.sqrt(3)],
        [8 / 300, 8 / 300, s / math.sqrt(3), s * math.sqrt(3)],
    ]
    torch.testing.assert_close(q, torch.tensor(expected), rtol=0, atol=PRIOR_TOL)
    # the very last box: level 5 (1x1, step 300), ratio 2 swapped:
    # 264/300/sqrt2 x 264/300*sqrt2 -> h clipped to 1
    torch.testing.assert_close(p[-1], torch.tensor([0.5, 0.5, 0.88 / r2, 1.0]), rtol=0, atol=PRIOR_TOL)
    unclipped = priors_of("ssd300_voc", clip="none")
    assert unclipped[-1, 3].item() == pytest.approx(0.88 * r2, abs=PRIOR_TOL)


def test_ssd300_coco_and_ssd512_hand_computed_priors():
    coco = priors_of("ssd300_coco")
    assert coco[0].tolist() == pytest.approx([4 / 300, 4 / 300, 0.07, 0.07], abs=PRIOR_TOL)
    assert coco[1, 2].item() == pytest.approx(math.sqrt(21 * 45) / 300, abs=PRIOR_TOL)
    voc512 = priors_of("ssd512_voc")
    assert voc512[0].tolist() == pytest.approx([4 / 512, 4 / 512, 0.07, 0.07], abs=PRIOR_TOL)
    # level 4 of SSD512 (4x4 grid, step 128) starts after 16384 + 6144 + 1536 + 384 boxes
    start = 16384 + 6144 + 1536 + 384
    assert voc512[start].tolist() == pytest.approx([64 / 512, 64 / 512, 0.6, 0.6], abs=PRIOR_TOL)
    assert voc512[start + 1, 2].item() == pytest.approx(math.sqrt(307.2 * 384.0) / 512, abs=PRIOR_TOL)
    coco512 = priors_of("ssd512_coco")
    assert coco512[0, 2].item() == pytest.approx(0.04, abs=PRIOR_TOL)
    # the 1x1 level: min 460.8, max 542.72 -> second box sqrt(460.8 * 542.72) / 512
    assert coco512[-3, 2].item() == pytest.approx(math.sqrt(460.8 * 542.72) / 512, abs=PRIOR_TOL)


def test_clip_modes_differ_only_where_the_grid_spills_over():
    # steps larger than image / grid put the second centre outside the image (cx = 1.5 * 80 / 100 = 1.2)
    config = PriorConfig(
        image_size=100,
        feature_maps=(2,),
        steps=(80,),
        min_sizes=(50,),
        max_sizes=(200,),
        aspect_ratios=((),),
    )
    none = generate_priors(config, clip="none")
    size = generate_priors(config, clip="size")
    center = generate_priors(config, clip="center")
    # cell (0, 1), second box: centre (1.2, 0.4), side sqrt(0.5 * 2) = 1.0
    assert none[3].tolist() == pytest.approx([1.2, 0.4, 1.0, 1.0], abs=PRIOR_TOL)
    # cell (1, 1), first box
    assert none[6].tolist() == pytest.approx([1.2, 1.2, 0.5, 0.5], abs=PRIOR_TOL)
    assert size[6].tolist() == pytest.approx([1.2, 1.2, 0.5, 0.5], abs=PRIOR_TOL)
    assert center[6].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5], abs=PRIOR_TOL)
    config_big = PriorConfig(100, (1,), (100,), (150,), (150,), ((),))
    assert generate_priors(config_big, clip="none")[0].tolist() == pytest.approx(
        [0.5, 0.5, 1.5, 1.5], abs=PRIOR_TOL
    )
    assert generate_priors(config_big, clip="size")[0].tolist() == pytest.approx(
        [0.5, 0.5, 1.0, 1.0], abs=PRIOR_TOL
    )
    assert generate_priors(config_big, clip="center")[0].tolist() == pytest.approx(
        [0.5, 0.5, 1.0, 1.0], abs=PRIOR_TOL
    )


def test_center_and_size_clip_differ_where_ssd300_grid_spills_over():
    center, size = priors_of("ssd300_voc", "center"), priors_of("ssd300_voc", "size")
    differ = (center != size).any(1).nonzero().flatten()
    # level 2 (10x10, step 32) starts at 5776 + 2166 and has 6 boxes per cell; its last column is centred
    # at 9.5 * 32 / 300 = 1.0133 (cx, rows 0..9), and its last row the same in cy
    start = 5776 + 2166
    cells = sorted({(int(i) - start) // 6 for i in differ})
    expected_cells = sorted({r * 10 + 9 for r in range(10)} | {90 + c for c in range(10)})
    assert cells == expected_cells and len(differ) == 19 * 6
    assert size[start + 9 * 6, 0].item() == pytest.approx(9.5 * 32 / 300, abs=PRIOR_TOL)
    assert center[start + 9 * 6, 0].item() == 1.0
    # SSD512's grids cover the image exactly: centre clipping changes nothing there
    assert torch.equal(priors_of("ssd512_coco", "center"), priors_of("ssd512_coco", "size"))
    assert not torch.equal(priors_of("ssd512_coco", "center"), priors_of("ssd512_coco", "none"))


@pytest.mark.parametrize("name", sorted(CAFFE_PRIOR_PARAMETERS))
def test_priors_equal_a_loop_transcription_of_caffes_prior_box_layer(name):
    """Every default box, against Caffe's PriorBox written out in plain loops (float64): the
    library's float32 value is the float64 one rounded once, so within half a float32 ulp."""
    config = PRESETS[name].prior_config
    levels = caffe_prior_boxes(*CAFFE_PRIOR_PARAMETERS[name])
    assert [len(boxes) for boxes in levels] == [
        size * size * per_cell for size, per_cell in zip(config.feature_maps, config.boxes_per_location)
    ]
    corners = torch.tensor([box for boxes in levels for box in boxes], dtype=torch.float64)
    expected = torch.cat(((corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]), dim=1)
    got = generate_priors(config, clip="none")
    assert got.dtype == torch.float32 and got.shape == expected.shape
    # half the float32 spacing at each value (2^-24 relative), plus the float64 noise of the two recipes
    half_ulp = torch.from_numpy(np.spacing(expected.abs().float().numpy())).double() / 2
    error = (got.double() - expected).abs()
    assert (error <= half_ulp + 1e-15).all(), f"max error {float(error.max()):.3g}"
    # centre clipping clamps each (cx, cy, w, h) of those same boxes to [0, 1]
    clipped = generate_priors(config, clip="center").double()
    assert ((clipped - expected.clamp(0, 1)).abs() <= half_ulp + 1e-15).all()


@pytest.mark.parametrize(
    "name, expected",
    [
        # SSD300: the single 1x1 cell's 264 and 288 px squares fit, its 2:1 and 1:2 boxes do not
        ("ssd300_voc", [1356, 914, 427, 136, 34, 2]),
        ("ssd300_coco", [947, 699, 413, 130, 32, 2]),
        ("ssd512_voc", [2460, 1788, 828, 304, 88, 16, 2]),
        ("ssd512_coco", [1500, 1444, 788, 280, 88, 16, 2]),
    ],
)
def test_count_outside_per_level_equals_counting_caffes_boxes_one_by_one(name, expected):
    assert caffe_count_outside(name) == expected
    assert count_outside(PRESETS[name].prior_config) == expected


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        PriorConfig(300, (38, 19), (8,), (30, 60), (60, 111), ((2,), (2,)))
    with pytest.raises(ValueError, match="clip"):
        PriorConfig(300, (38,), (8,), (30,), (60,), ((2,),), clip="corners")
    with pytest.raises(ValueError, match="> 1"):
        PriorConfig(300, (38,), (8,), (30,), (60,), ((0.5,),))
    config = PRESETS["ssd512_voc"].prior_config
    assert PriorConfig.from_dict(config.to_dict()) == config


def test_level_box_sizes_are_the_priors_of_one_cell():
    from singleshot.presets import get_preset
    from singleshot.priors import level_box_sizes

    config = get_preset("ssd300_voc").prior_config.with_clip("none")
    s, s_max = 30 / 300, 60 / 300
    root = math.sqrt(2.0)
    expected = [(s, s), (math.sqrt(s * s_max),) * 2, (s * root, s / root), (s / root, s * root)]
    np.testing.assert_allclose(level_box_sizes(config, 0), expected, rtol=1e-15, atol=0)
    # the first cell's priors (cx, cy, w, h) carry these sizes, rounded to float32 once
    first_cell = generate_priors(config)[: len(expected), 2:]
    assert torch.equal(first_cell, torch.tensor(expected, dtype=torch.float64).float())
    assert len(level_box_sizes(config, 2)) == config.boxes_per_location[2] == 6
