"""2x2 max pooling inside the Winograd output transform: the operator's ``pool`` against
``F.max_pool2d`` of its own unpooled output (bit for bit, every schedule, both thread paths,
NaN, odd sizes in floor and ceil mode), the conversion that fuses ``nn.MaxPool2d`` and its
undoing, and SSD300's VGG16 with its three pools fused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ci import require
from singleshot import build_model
from singleshot.winograd import (
    FusedMaxPool2d,
    FusedReLU,
    WinogradConv2d,
    fusable_pool,
    pack_filters,
    revert_winograd,
    transform_weight,
    use_winograd,
)
from singleshot.winograd import build as kernel_build
from singleshot.winograd import ops as winograd_ops
from singleshot.winograd.conv import conv_packed
from singleshot.winograd.ops import NO_POOL, POOL_CEIL, POOL_FLOOR

OP = torch.ops.singleshot.winograd_conv3x3.default


@pytest.fixture
def compiler():
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")


def layer(channels, out_channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, channels, 3, 3, generator=g)
    return pack_filters(transform_weight(weight)), torch.randn(out_channels, generator=g)


def maps(batch, channels, height, width, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g)
    return x.contiguous(memory_format=torch.channels_last)


def pooled_reference(x, filters, bias, relu, pool, block_tiles=-1):
    """The operator's own unpooled output, pooled by PyTorch."""
    full = conv_packed(x, filters, bias, relu, block_tiles)
    return F.max_pool2d(full, 2, 2, ceil_mode=pool == POOL_CEIL)


# (C, K, H, W): odd and even sides; maps whose last tile holds 1, 2 or 3 rows or columns;
# more than one 64-channel block and a partial one; a single row (ceil mode only)
SHAPES = [(5, 7, 9, 6), (20, 33, 13, 10), (70, 40, 11, 15), (8, 16, 4, 4), (3, 40, 1, 7)]


# (a single row has no 2x2 window without ceil mode: rejected, as tested below)
CASES = [(s, pool) for s in SHAPES for pool in (POOL_FLOOR, POOL_CEIL) if min(s[2:]) > 1 or pool == POOL_CEIL]


@pytest.mark.parametrize(("shape", "pool"), CASES)
def test_pooling_in_the_output_transform_is_max_pool2d_of_the_output(compiler, shape, pool):
    channels, out_channels, height, width = shape
    filters, bias = layer(channels, out_channels)
    x = maps(2, channels, height, width)
    for relu in (False, True):
        for use_bias in (bias, None):
            expected = pooled_reference(x, filters, use_bias, relu, pool)
            got = conv_packed(x, filters, use_bias, relu, pool=pool)
            assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(got, expected), (shape, pool, relu, use_bias is None)


@pytest.mark.parametrize("openmp", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
def test_every_schedule_and_thread_count_pools_to_the_same_bits(compiler, monkeypatch, openmp, threads):
    # 3 images of 4 x 4 tiles = 48 tiles: blocks of 6 and 48 and chunks of 2048 // 40 = 51 tiles
    if openmp:
        require(kernel_build.kernels_use_openmp(), "Winograd kernels built with PyTorch's OpenMP")
    else:
        monkeypatch.setattr(winograd_ops, "kernels_use_openmp", lambda: False)
    monkeypatch.setattr(winograd_ops, "CHUNK_ELEMENTS", 2048)
    filters, bias = layer(24, 40, seed=3)
    x = maps(3, 24, 15, 13, seed=4)
    expected = pooled_reference(x, filters, bias, True, POOL_CEIL)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for block_tiles in (winograd_ops.BY_RULE, winograd_ops.SHARED_CHUNKS, 6, 48):
            got = conv_packed(x, filters, bias, True, block_tiles, POOL_CEIL)
            assert torch.equal(got, expected), block_tiles
    finally:
        torch.set_num_threads(previous)


def test_a_nan_anywhere_in_a_window_is_the_pooled_value_as_in_pytorch(compiler):
    # one huge pixel overflows some outputs to inf and others, through the transforms' inf - inf,
    # to NaN; some 2x2 windows then hold NaN after a number, where a plain "greater" keeps the number
    filters, _ = layer(4, 4, seed=0)
    x = torch.zeros(1, 4, 8, 8)
    x[0, :, 3, 3] = 3e38
    x = x.contiguous(memory_format=torch.channels_last)
    full = conv_packed(x, filters, None, False)
    windows = full.unfold(2, 2, 2).unfold(3, 2, 2).reshape(1, 4, 4, 4, 4).isnan()
    assert (~windows[..., 0] & windows[..., 1:].any(-1)).any()  # the case the test is about
    got = conv_packed(x, filters, None, False, pool=POOL_FLOOR)
    torch.testing.assert_close(got, F.max_pool2d(full, 2, 2), rtol=0, atol=0, equal_nan=True)


def test_bad_pool_arguments_are_value_errors(compiler):
    filters, bias = layer(3, 8)
    for pool in (3, -1, True, 1.0, "ceil"):
        with pytest.raises(ValueError, match="pool must be 0"):
            conv_packed(maps(1, 3, 6, 6), filters, bias, False, pool=pool)
    with pytest.raises(ValueError, match=r"\(1, 7\) map is too small for 2x2 max pooling"):
        conv_packed(maps(1, 3, 1, 7), filters, bias, False, pool=POOL_FLOOR)


def test_the_fake_implementation_gives_the_pooled_shape(compiler):
    filters, bias = layer(3, 8)
    x = maps(2, 3, 9, 6)
    program = torch.export.export(PooledConv(filters, bias), (x,))
    (call,) = [node for node in program.graph.nodes if node.target is OP]
    assert tuple(call.meta["val"].shape) == (2, 8, 5, 3)  # ceil(9 / 2), ceil(6 / 2)
    assert torch.equal(program.module()(x), conv_packed(x, filters, bias, True, pool=POOL_CEIL))


class PooledConv(nn.Module):
    def __init__(self, filters, bias):
        super().__init__()
        self.filters, self.bias = filters, bias

    def forward(self, x):
        return OP(x, self.filters, self.bias, True, -1, POOL_CEIL)


def test_which_poolings_can_be_fused():
    assert fusable_pool(nn.MaxPool2d(2, 2)) == POOL_FLOOR
    assert fusable_pool(nn.MaxPool2d((2, 2), stride=(2, 2), ceil_mode=True)) == POOL_CEIL
    assert fusable_pool(nn.MaxPool2d(2)) == POOL_FLOOR  # the stride defaults to the window
    for other in (
        nn.MaxPool2d(3, stride=1, padding=1),  # SSD's pool5
        nn.MaxPool2d(2, stride=1),
        nn.MaxPool2d(2, 2, padding=1),
        nn.MaxPool2d(2, 2, dilation=2),
        nn.MaxPool2d(2, 2, return_indices=True),
        nn.AvgPool2d(2, 2),
        None,
    ):
        assert fusable_pool(other) is None, other


def conv_relu_pool_model(ceil_mode):
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2, ceil_mode=ceil_mode),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.MaxPool2d(2, 2),  # no ReLU between
        nn.Conv2d(16, 8, 3, padding=1),
        nn.MaxPool2d(3, stride=1, padding=1),  # not fusable
    ).eval()


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_use_winograd_fuses_the_poolings_and_revert_gives_them_back(compiler, ceil_mode):
    model = conv_relu_pool_model(ceil_mode)
    before = copy.deepcopy(model)
    unfused = copy.deepcopy(model)
    assert use_winograd(unfused, min_channels=1, fuse_pool=False) == ["0", "3", "5"]
    assert [type(m) for m in unfused] == [WinogradConv2d, FusedReLU, nn.MaxPool2d] + [
        WinogradConv2d,
        nn.MaxPool2d,
        WinogradConv2d,
        nn.MaxPool2d,
    ]
    assert use_winograd(model, min_channels=1) == ["0", "3", "5"]
    assert [type(m) for m in model] == [WinogradConv2d, FusedReLU, FusedMaxPool2d] + [
        WinogradConv2d,
        FusedMaxPool2d,
        WinogradConv2d,
        nn.MaxPool2d,
    ]
    assert [model[0].pool, model[3].pool, model[5].pool] == [POOL_CEIL if ceil_mode else POOL_FLOOR] + [
        POOL_FLOOR,
        NO_POOL,
    ]
    x = torch.randn(2, 8, 19, 21)
    with torch.inference_mode():
        fused_out = model(x)
        assert torch.equal(fused_out, unfused(x))  # pooling is exact: the same bits either way
        plain_out = before(x)
    assert fused_out.shape == plain_out.shape
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-4, atol=1e-4)
    assert revert_winograd(model) == ["0", "3", "5"]
    assert repr(model) == repr(before)
    with torch.inference_mode():
        assert torch.equal(model(x), before(x))


def test_nothing_is_fused_inside_a_sequential_with_its_own_forward(compiler):
    class Tapped(nn.Sequential):
        """A Sequential whose forward also returns the convolution's own output."""

        def forward(self, x):
            conv = self[0](x)
            return conv, self[2](self[1](conv))

    model = Tapped(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)).eval()
    assert use_winograd(model, min_channels=1) == ["0"]
    assert model[0].pool == NO_POOL and not model[0].relu
    assert type(model[1]) is nn.ReLU and type(model[2]) is nn.MaxPool2d
    x = torch.randn(1, 4, 6, 6)
    conv, pooled = model(x)
    assert conv.shape == (1, 4, 6, 6) and (conv < 0).any()  # the convolution's own output, not its ReLU
    assert torch.equal(pooled, F.max_pool2d(conv.relu(), 2, 2))


def test_ssd300_runs_pool1_to_pool3_inside_conv1_2_to_conv3_3(compiler):
    torch.manual_seed(0)
    model = build_model("ssd300_voc", num_classes=4).eval()
    unfused = copy.deepcopy(model)
    use_winograd(model.backbone, min_channels=64)
    use_winograd(unfused.backbone, min_channels=64, fuse_pool=False)
    vgg = model.backbone.to_conv4_3
    fused = {name: module.pool for name, module in vgg.named_children() if isinstance(module, WinogradConv2d)}
    assert fused == {
        "conv1_2": POOL_FLOOR,
        "conv2_1": NO_POOL,
        "conv2_2": POOL_FLOOR,
        "conv3_1": NO_POOL,
        "conv3_2": NO_POOL,
        "conv3_3": POOL_CEIL,  # 75 -> 38
        "conv4_1": NO_POOL,
        "conv4_2": NO_POOL,
        "conv4_3": NO_POOL,  # pool4 lies beyond the conv4_3 source, in the next Sequential
    }
    assert [name for name, m in vgg.named_children() if isinstance(m, FusedMaxPool2d)] == [
        "pool1",
        "pool2",
        "pool3",
    ]
    assert type(model.backbone.to_conv7.pool4) is nn.MaxPool2d
    x = torch.randn(1, 3, 300, 300).contiguous(memory_format=torch.channels_last) * 50
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(model(x), unfused(x), strict=True))
