"""Winograd convolution: equal to the direct convolution, computed independently in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import singleshot
from singleshot.winograd import (
    WinogradConv2d,
    pick_tile,
    transform_weight,
    use_winograd,
    winograd_conv3x3,
)


def direct(x, weight, bias):
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize(
    "shape",
    [(2, 5, 7, 1, 1), (1, 3, 4, 5, 7), (2, 16, 8, 19, 19), (1, 8, 8, 38, 21), (3, 4, 6, 8, 8)],
)
def test_equals_direct_convolution(tile, shape):
    n, c, k, h, w = shape
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g)
    bias = torch.randn(k, generator=g)
    expected = direct(x, weight, bias)
    got = winograd_conv3x3(x, transform_weight(weight, tile), bias, tile)
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    # float32 rounding of the transforms: F(4x4, 3x3) multiplies by up to 8, so a looser bound.
    tolerance = 1e-6 if tile == 2 else 1e-5
    assert (got.double() - expected).abs().max() <= tolerance * expected.abs().max()


def test_single_tile_by_hand():
    """One 2x2 output from a 4x4 input with a filter of ones: each output is the sum of
    its 3x3 neighbourhood (zero padded)."""
    x = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    weight = torch.ones(1, 1, 3, 3)
    for tile in (2, 4):
        got = winograd_conv3x3(x, transform_weight(weight, tile), None, tile)
        assert torch.allclose(got[0, 0], torch.full((2, 2), 6.0), atol=1e-5)


def test_relu_and_no_bias():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 9, 9, generator=g)
    weight = torch.randn(4, 6, 3, 3, generator=g)
    got = winograd_conv3x3(x, transform_weight(weight, 2), None, 2, relu=True)
    expected = direct(x, weight, None).clamp(min=0)
    assert (got >= 0).all() and (got == 0).any()
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_weight_transform_of_a_delta_filter():
    """A filter that picks the centre pixel transforms to G e_1 e_1^T G^T: column 1 of G
    (0, 1/2, -1/2, 0 for F(2x2, 3x3)) in an outer product with itself."""
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1
    u = transform_weight(weight, 2).view(4, 4)
    column = torch.tensor([0.0, 0.5, -0.5, 0.0])
    assert torch.equal(u, torch.outer(column, column))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile must be one of"):
        transform_weight(torch.zeros(1, 1, 3, 3), 3)
    with pytest.raises(ValueError, match="3, 3"):
        transform_weight(torch.zeros(1, 1, 5, 5), 2)
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(nn.Conv2d(4, 4, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(nn.Conv2d(4, 4, 3, padding=6, dilation=6))
    with pytest.raises(ValueError, match="example input"):
        use_winograd(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)))


def test_pick_tile():
    assert pick_tile(75, 75) == 4 and pick_tile(38, 38) == 4 and pick_tile(32, 40) == 4
    assert pick_tile(19, 19) == 2 and pick_tile(64, 31) == 2


def test_use_winograd_replaces_fuses_relu_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # too few input channels: kept
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # replaced, ReLU fused
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),  # replaced, no ReLU after it
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # not eligible
        nn.Conv2d(8, 4, 3, padding=1),  # too few output channels: kept
    ).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = model(x)
    replaced = use_winograd(model, x, min_channels=8, compiled=False)
    assert replaced == ["2", "5"]
    assert isinstance(model[3], nn.Identity) and isinstance(model[1], nn.ReLU)
    assert (model[2].tile, model[2].relu) == (4, True)  # 56x56 map
    assert (model[5].tile, model[5].relu) == (2, False)  # 28x28 after pooling
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_ssd300_backbone_layers_and_detections_unchanged():
    torch.manual_seed(0)
    model = singleshot.build_model("ssd300_voc").eval()
    x = torch.randn(1, 3, 300, 300) * 50
    with torch.no_grad():
        loc_ref, conf_ref = model(x)
    replaced = use_winograd(model, x, compiled=False)
    expected = [f"backbone.to_conv4_3.conv{i}" for i in ("3_2", "3_3", "4_1", "4_2", "4_3")]
    expected += [f"backbone.to_conv7.conv5_{i}" for i in (1, 2, 3)]
    assert replaced == expected
    modules = dict(model.named_modules())
    tiles = {name: modules[name].tile for name in replaced}
    assert tiles["backbone.to_conv4_3.conv3_2"] == 4 and tiles["backbone.to_conv7.conv5_1"] == 2
    with torch.no_grad():
        loc, conf = model(x)
    assert (loc - loc_ref).abs().max() <= 1e-4 * loc_ref.abs().max()
    assert (conf - conf_ref).abs().max() <= 1e-4 * conf_ref.abs().max()


def test_compiled_path_equals_eager():
    """The compiled function (what `use_winograd` installs by default) on a small layer."""
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    compiled = WinogradConv2d(conv, tile=2, relu=True)
    eager = WinogradConv2d(conv, tile=2, relu=True, compiled=False)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-6)
        assert torch.allclose(compiled(x), F.relu(conv(x)), atol=1e-5)
