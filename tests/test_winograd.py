"""Winograd F(4x4, 3x3) convolutions: against float64 direct convolution, hand values, the
chunking and threading of the tiles, the model conversion, and the kernel build's errors."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ci import require
from singleshot import build_model
from singleshot.cache import cpu_identity
from singleshot.inference import preprocess
from singleshot.winograd import (
    KernelBuildError,
    WinogradConv2d,
    is_winograd_eligible,
    pack_filters,
    transform_weight,
    use_winograd,
    winograd_conv3x3,
)
from singleshot.winograd import build as kernel_build
from singleshot.winograd import ops as winograd_ops
from singleshot.winograd import panel_width as winograd_panel_width
from tolerances import WINOGRAD_GAIN, network, reduction, rounding


@pytest.fixture
def compiler():
    """The tests that run the kernels need a C compiler (a failure under CI, else a skip)."""
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")


def direct(x, weight, bias=None, relu=False):
    """The reference: float64 direct convolution."""
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    return out.relu() if relu else out


def max_error(got, reference):
    return float((got.double() - reference.double()).abs().max())


def winograd_tol(x, weight, bias=None):
    """WINOGRAD_GAIN x the `reduction` bound of the direct 3x3 convolution (9 C terms and
    the bias), at its largest sum of |terms|."""
    terms = F.conv2d(
        x.double().abs(), weight.double().abs(), None if bias is None else bias.double().abs(), padding=1
    )
    return WINOGRAD_GAIN * reduction(9 * x.shape[1] + 1, terms.max().item())


def test_filter_transform_of_a_centre_tap_is_the_outer_product_of_gs_middle_column():
    # g = 1 at the centre only: U = G[:, 1] G[:, 1]^T, G's middle column (0, -1/6, 1/6, 1/12, -1/12, 0).
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0
    column = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0], dtype=torch.float64)
    u = transform_weight(weight)
    assert u.shape == (36, 1, 1) and u.dtype == torch.float32
    # computed in float64 and rounded once to float32, values <= 1/36
    expected = torch.outer(column, column).flatten()
    torch.testing.assert_close(u[:, 0, 0].double(), expected, rtol=0, atol=rounding(1 / 36))


def test_filter_transform_layout_is_position_input_output():
    weight = torch.randn(5, 3, 3, 3)
    u = transform_weight(weight)
    assert u.shape == (36, 3, 5)
    # position (0, 0) only sees g[0, 0] / 16 (G's first row is (1/4, 0, 0))
    assert torch.equal(u[0], weight[:, :, 0, 0].t() / 16)  # a power of two: exact
    # position (5, 5) only sees g[2, 2]
    assert torch.equal(u[35], weight[:, :, 2, 2].t())


def test_box_filter_on_ones_counts_the_neighbours_inside_the_map(compiler):
    x = torch.ones(1, 1, 5, 6)
    weight = torch.ones(1, 1, 3, 3)
    y = winograd_conv3x3(x, transform_weight(weight))
    expected = torch.full((5, 6), 9.0)
    expected[[0, -1], :] = 6.0
    expected[:, [0, -1]] = 6.0
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 4.0
    torch.testing.assert_close(y[0, 0], expected, rtol=0, atol=winograd_tol(x, weight))


@pytest.mark.parametrize(
    "batch, channels, out_channels, height, width",
    [
        (1, 1, 1, 1, 1),  # a single pixel: every other tap is padding
        (2, 3, 5, 7, 9),  # map sizes not multiples of the tile
        (1, 70, 130, 19, 19),  # channel counts not multiples of the 64-channel block
        (3, 64, 64, 8, 4),  # exact tiles, several images
        (1, 128, 16, 38, 38),
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_equals_direct_convolution(compiler, batch, channels, out_channels, height, width, relu):
    torch.manual_seed(batch * 1000 + channels + height)
    x = torch.randn(batch, channels, height, width)
    weight = torch.randn(out_channels, channels, 3, 3)
    bias = torch.randn(out_channels)
    got = winograd_conv3x3(x, transform_weight(weight), bias, relu=relu)
    assert got.shape == (batch, out_channels, height, width)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert max_error(got, direct(x, weight, bias, relu)) <= winograd_tol(x, weight, bias)
    if relu:
        assert (got >= 0).all()


def test_without_bias_and_from_a_non_contiguous_input(compiler):
    torch.manual_seed(1)
    x = torch.randn(2, 9, 11, 6).permute(0, 3, 1, 2)  # (2, 6, 9, 11), strided
    weight = torch.randn(4, 6, 3, 3)
    assert max_error(winograd_conv3x3(x, transform_weight(weight)), direct(x, weight)) <= winograd_tol(
        x, weight
    )


@pytest.mark.parametrize(
    "openmp, blocks",
    [(True, True), (True, False), (False, False)],
    ids=["openmp-blocks", "openmp-chunks", "python-threads"],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_blocks_and_threads_give_the_same_bits(compiler, monkeypatch, threads, openmp, blocks):
    # 100 tiles per 40x40 image; chunks of 2048 // 32 = 64 tiles and blocks of 6 cross image
    # borders and are cut unevenly between the threads (OpenMP's, or this thread and helpers).
    # The products sum every output over the channels in one order whatever the tile count,
    # and the transforms are per tile: the same bits as one thread on one chunk.
    torch.manual_seed(2)
    x = torch.randn(3, 32, 40, 40)
    weight = torch.randn(32, 32, 3, 3)
    bias = torch.randn(32)
    u = transform_weight(weight)
    monkeypatch.setattr(winograd_ops, "BLOCKS_MAX_FILTERS", 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = winograd_conv3x3(x, u, bias, relu=True)
    finally:
        torch.set_num_threads(previous)
    if openmp:
        require(kernel_build.kernels_use_openmp(), "Winograd kernels built with PyTorch's OpenMP")
    else:
        monkeypatch.setattr(winograd_ops, "kernels_use_openmp", lambda: False)
    monkeypatch.setattr(winograd_ops, "BLOCKS_MAX_FILTERS", 32 * 32 if blocks else 0)
    pool = winograd_ops._helpers()
    monkeypatch.setattr(winograd_ops, "CHUNK_ELEMENTS", 2048)
    torch.set_num_threads(threads)
    try:
        cut = winograd_conv3x3(x, u, bias, relu=True)
    finally:
        torch.set_num_threads(previous)
    assert winograd_ops._helpers() is pool  # one pool, whatever the thread count
    assert torch.equal(cut, whole)
    assert max_error(cut, direct(x, weight, bias, relu=True)) <= winograd_tol(x, weight, bias)


def test_rejects_bad_inputs():
    u = transform_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="float32 CPU"):
        winograd_conv3x3(torch.randn(1, 3, 5, 5, dtype=torch.float64), u)
    with pytest.raises(ValueError, match=r"not float32 \(36, 5, K\)"):
        winograd_conv3x3(torch.randn(1, 5, 5, 5), u)
    with pytest.raises(ValueError, match="not float32"):
        winograd_conv3x3(torch.randn(1, 3, 5, 5), u.double())
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        transform_weight(torch.randn(4, 3, 5, 5))


def test_eligibility():
    assert is_winograd_eligible(nn.Conv2d(8, 8, 3, padding=1))
    for conv in [
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.Conv2d(8, 8, 3, padding=6, dilation=6),
        nn.Conv2d(8, 8, 3, padding=0),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.Linear(8, 8),
    ]:
        assert not is_winograd_eligible(conv)
    with pytest.raises(ValueError, match="Winograd needs"):
        WinogradConv2d(nn.Conv2d(8, 8, 3, padding=0))


def test_module_matches_conv_and_relu_and_refuses_training(compiler):
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    module = WinogradConv2d(conv, relu=True)
    x = torch.randn(2, 16, 10, 13)
    with torch.no_grad():
        tol = winograd_tol(x, conv.weight, conv.bias)
        assert max_error(module(x), direct(x, conv.weight, conv.bias, relu=True)) <= tol
    with pytest.raises(RuntimeError, match="inference"):
        module(x.requires_grad_())


def test_use_winograd_on_ssd300_replaces_conv2_2_to_conv5_3_and_keeps_the_outputs(compiler):
    torch.manual_seed(4)
    model = build_model("ssd300_voc").eval()
    fast = build_model("ssd300_voc").eval()
    fast.load_state_dict(model.state_dict())
    replaced = use_winograd(fast)
    expected = ["conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3"]
    assert replaced == [f"backbone.to_conv4_3.{n}" for n in expected] + [
        f"backbone.to_conv7.conv5_{i}" for i in (1, 2, 3)
    ]
    backbone = fast.backbone.to_conv4_3
    assert isinstance(backbone.conv3_2, WinogradConv2d) and backbone.conv3_2.relu
    assert isinstance(backbone.relu3_2, nn.Identity)
    assert isinstance(backbone.conv1_2, nn.Conv2d)  # 64 channels: below min_channels
    x = torch.randn(2, 3, 300, 300) * 50
    with torch.no_grad():
        loc, conf = model(x)
        fast_loc, fast_conf = fast(x)
    # the network's bound, its ten Winograd layers' share WINOGRAD_GAIN times larger
    assert max_error(fast_loc, loc) <= WINOGRAD_GAIN * network(model, loc.abs().max().item())
    assert max_error(fast_conf, conf) <= WINOGRAD_GAIN * network(model, conf.abs().max().item())
    image = (x[0] + 120).clamp(0, 255).to(torch.uint8)
    (a,), (b,) = model.predict(image), fast.predict(image)
    assert len(a["scores"]) > 0
    # softmax moves by <= 1/2 the logits' change
    with torch.no_grad():
        _, conf_image = model(preprocess([image], model.image_size, model.image_mean))
    score_tol = WINOGRAD_GAIN * network(model, conf_image.abs().max().item())
    torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=score_tol)
    # random weights give near-equal scores: the order may swap between ties near the 200 cap
    assert torch.equal(b["labels"][:150], a["labels"][:150])


def test_kernels_build_once_into_the_cache(compiler, fresh_build, monkeypatch, capsys):
    kernel_build.load_kernels()
    built = list(fresh_build.glob("winograd-*.so"))
    assert len(built) == 1
    # the first build says so, in one line naming the compiler and the file
    note = capsys.readouterr().err.splitlines()
    assert len(note) == 1 and "compiling the Winograd kernels" in note[0] and str(built[0]) in note[0]
    monkeypatch.setattr(kernel_build, "_loaded", None)

    def no_compiling(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(kernel_build, "_compile", no_compiling)
    kernel_build.load_kernels()
    assert list(fresh_build.glob("winograd-*.so")) == built
    assert capsys.readouterr().err == ""


def test_missing_compiler_is_a_clear_error(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(KernelBuildError, match="need a C compiler.*no-such-compiler-here"):
        kernel_build.load_kernels()
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())
    with pytest.raises(KernelBuildError):
        use_winograd(model)
    assert isinstance(model[0], nn.Conv2d)  # nothing converted


def test_failing_compiler_is_a_clear_error(fresh_build, monkeypatch, tmp_path_factory):
    script = tmp_path_factory.mktemp("cc") / "broken-cc"
    script.write_text("#!/bin/sh\necho 'kernels.c: fatal error: out of paper' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    with pytest.raises(KernelBuildError, match="failed:\n.*out of paper"):
        kernel_build.load_kernels()
    assert not list(fresh_build.glob("winograd-*.so"))


def test_packed_filters_follow_the_panel_layout(compiler):
    # a transcription of the layout pack_filters documents, element by element: panel j
    # (columns k0 .. k0 + w) stored as its C rows of w floats, starting at k0 * C
    width = winograd_panel_width()
    assert width in (8, 16, 32)  # twice the CPU's float32 vector: SSE, AVX2, AVX-512
    channels, out_channels = 3, 2 * width + 5  # two full panels and a narrow one
    u = torch.arange(36 * channels * out_channels, dtype=torch.float32).reshape(36, channels, out_channels)
    packed = pack_filters(u)
    assert packed.shape == (36, channels * out_channels) and packed.is_contiguous()
    for p in (0, 17, 35):
        for k0 in range(0, out_channels, width):
            w = min(width, out_channels - k0)
            for c in range(channels):
                for column in range(w):
                    assert packed[p, k0 * channels + c * w + column] == u[p, c, k0 + column]


@pytest.mark.parametrize("channels", [1, 7, 64, 300])  # 300: three depth blocks, the last partial
def test_products_kernel_equals_float64_products_for_every_remainder(compiler, channels):
    # tile counts with every remainder of the 6-row register block, output channels with
    # full panels, a narrow last panel and a panel of one; against float64 matmul
    torch.manual_seed(channels)
    kernels = winograd_ops.load_kernels()
    width = winograd_panel_width()
    for count in (1, 5, 6, 13, 40):
        for out_channels in (1, width - 1, width, width + 3, 2 * width):
            v = torch.randn(36, count, channels)
            u = torch.randn(36, channels, out_channels)
            packed, got = pack_filters(u), torch.full((36, count, out_channels), float("nan"))
            winograd_ops._products(kernels.winograd_products, 2, v.data_ptr(), packed.data_ptr(),
                                   got.data_ptr(), count, channels, out_channels)  # fmt: skip
            expected = torch.bmm(v.double(), u.double())
            scale = torch.bmm(v.double().abs(), u.double().abs()).max().item()
            assert max_error(got, expected) <= reduction(channels, scale), (count, out_channels)


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags, from the lines the kernel cache keys on."""
    line = next((line for line in cpu_identity().splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.mark.parametrize(
    "capability, flags, width",
    [("default", (), 8), ("avx2", ("-march=native", "-mno-avx512f"), 16), ("", ("-march=native",), None)],
)
def test_the_kernels_follow_atens_cpu_capability(
    compiler, fresh_build, monkeypatch, capability, flags, width
):
    # ATEN_CPU_CAPABILITY=default builds the x86-64 baseline (SSE: 4 lanes, panels of 8), avx2
    # leaves out AVX-512 (8 lanes, panels of 16); each is its own cached library, and each
    # computes the same convolution
    require(platform.machine() in ("x86_64", "AMD64") and "avx2" in cpu_flags(), "an x86-64 CPU with AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    assert kernel_build.target_flags() == flags
    expected_width = width or (32 if "avx512f" in cpu_flags() else 16)
    assert winograd_panel_width() == expected_width
    assert [path.name for path in fresh_build.glob("winograd-*.so")] == [
        kernel_build.kernel_path(
            kernel_build.find_compiler(), kernel_build.kernel_flags(kernel_build.find_compiler())
        ).name
    ]
    torch.manual_seed(3)
    x, weight, bias = (
        torch.randn(2, 40, 13, 11),
        torch.randn(expected_width + 5, 40, 3, 3),
        torch.randn(expected_width + 5),
    )
    got = winograd_conv3x3(x, transform_weight(weight), bias, relu=True)
    assert max_error(got, direct(x, weight, bias, relu=True)) <= winograd_tol(x, weight, bias)
