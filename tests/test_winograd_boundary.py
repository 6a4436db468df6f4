"""The Winograd accelerator's boundary: the custom operator (its checks, its fake implementation
under torch.export, torch.compile and make_fx), the state dict of a converted model, revert_winograd,
checkpoints of converted models and the TorchScript / ONNX refusal."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import singleshot
from ci import require
from singleshot import build_model
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.winograd import (
    FusedReLU,
    WinogradConv2d,
    pack_filters,
    revert_winograd,
    transform_weight,
    use_winograd,
)
from singleshot.winograd import build as kernel_build
from singleshot.winograd import ops as winograd_ops
from tolerances import WINOGRAD_GAIN, reduction

OP = torch.ops.singleshot.winograd_conv3x3.default


@pytest.fixture
def compiler():
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")


@pytest.fixture
def no_c(monkeypatch):
    """Any call that would reach the C kernels fails the test."""

    def refuse():
        raise AssertionError("the C kernels were reached")

    monkeypatch.setattr(winograd_ops, "load_kernels", refuse)


def small_model():
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(24, 8, 3, padding=1, bias=False)
    ).eval()


def direct_tol(x, model):
    """WINOGRAD_GAIN x the direct convolution's rounding bound, per layer, at the largest sum of |terms|."""
    terms = x.double().abs()
    for layer in model:
        if isinstance(layer, (nn.Conv2d, WinogradConv2d)):
            bias = None if layer.bias is None else layer.bias.double().abs()
            terms = F.conv2d(terms, layer.weight.double().abs(), bias, padding=1)
    return 2 * WINOGRAD_GAIN * reduction(9 * 24 + 1, terms.max().item())


def test_operator_rejects_bad_arguments_before_any_c(no_c):
    x = torch.randn(1, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    u = pack_filters(transform_weight(torch.randn(4, 3, 3, 3)))  # (36, 3 * 4)
    bad = [
        ((x.double(), u, None), "float32 CPU"),
        ((x[0], u, None), "float32 CPU"),  # 3-D
        ((x.to("meta"), u, None), "float32 CPU"),
        ((torch.randn(1, 3, 5, 5), u, None), "channels-last contiguous"),  # NCHW memory
        ((x[:, :, ::2], u, None), "channels-last contiguous"),  # strided view
        ((x, u[:, :8], None), r"not float32 \(36, 3 \* K\)"),  # not a multiple of the input channels
        ((x, u.reshape(36, 3, 4), None), r"not float32 \(36, 3 \* K\)"),  # unpacked
        ((x, u.double(), None), "not float32"),
        ((x, u.to("meta"), None), "filters must be contiguous on the CPU"),
        ((x, u[:, ::2], None), "filters must be contiguous on the CPU"),
        ((x, u, torch.randn(5)), r"not float32 \(4,\)"),
        ((x, u, torch.randn(4, dtype=torch.float64)), r"not float32 \(4,\)"),
        ((x, u, torch.randn(8)[::2]), "bias must be contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            OP(*args, False)


def test_fake_implementation_gives_shape_and_layout_and_checks_too(no_c):
    x = torch.randn(2, 3, 7, 9).contiguous(memory_format=torch.channels_last)
    u = pack_filters(transform_weight(torch.randn(4, 3, 3, 3)))
    graph = make_fx(lambda x, u: OP(x, u, None, True), tracing_mode="fake")(x, u)
    calls = [node for node in graph.graph.nodes if node.target is OP]
    assert len(calls) == 1
    value = calls[0].meta["val"]
    assert value.shape == (2, 4, 7, 9) and value.dtype == torch.float32
    assert value.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels-last"):
        make_fx(lambda x, u: OP(x, u, None, True), tracing_mode="fake")(x.contiguous(), u)


def test_export_and_compile_record_the_operator_and_give_the_same_output(compiler):
    model = small_model()
    reference = copy.deepcopy(model)
    assert use_winograd(model, min_channels=1) == ["0", "2"]
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        eager = model(x)
        program = torch.export.export(model, (x,))
        compiled = torch.compile(model, backend="eager", fullgraph=True)(x)
        expected = reference(x)
    calls = [node for node in program.graph.nodes if node.target is OP]
    assert [node.args[3] for node in calls] == [True, False]  # the ReLU fused into the first
    assert not any(str(node.target).startswith("aten.conv") for node in program.graph.nodes)
    # the same operator on the same tensors: the same bits
    assert torch.equal(program.module()(x), eager)
    assert torch.equal(compiled, eager)
    assert float((eager.double() - expected.double()).abs().max()) <= direct_tol(x, reference)


def test_state_dict_is_the_original_and_loading_refreshes_the_filters(no_c):
    model = small_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    converted = WinogradConv2d(model[0], relu=True)
    model[0], model[1] = converted, FusedReLU(inplace=True)
    state = model.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    other = small_model()
    with torch.no_grad():
        other[0].weight.mul_(-3)
    model.load_state_dict(other.state_dict())
    assert torch.equal(converted.weight, other[0].weight)
    assert torch.equal(converted.u, pack_filters(transform_weight(other[0].weight)))


def test_revert_gives_back_the_convolutions_and_relus_bit_for_bit(compiler):
    model = small_model()
    before = copy.deepcopy(model)
    parameters = list(model.parameters())
    use_winograd(model, min_channels=1)
    assert isinstance(model[1], FusedReLU)
    assert revert_winograd(model) == ["0", "2"]
    assert repr(model) == repr(before)  # nn.Conv2d, nn.ReLU(inplace=True), nn.Conv2d without bias
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    for (name, a), (_, b) in zip(model.state_dict().items(), before.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        assert torch.equal(model(x), before(x))
    assert revert_winograd(model) == []


def test_a_converted_model_saves_a_checkpoint_that_loads_into_a_plain_model(compiler, tmp_path):
    torch.manual_seed(6)
    plain = build_model("ssd160_compact").eval()
    converted = copy.deepcopy(plain)
    assert use_winograd(converted) == ["backbone.to_stride16.1.conv"]  # its only 3x3 conv with 128+ channels
    path = save_checkpoint(tmp_path / "converted.pt", converted)
    saved = load_checkpoint(path)["state_dict"]
    assert list(saved) == list(plain.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in plain.state_dict().items())
    loaded = singleshot.load(path).eval()
    assert not any(isinstance(m, WinogradConv2d) for m in loaded.modules())
    # the same as a checkpoint of the plain model (load() lays out weights its own way: like with like)
    loaded_plain = singleshot.load(save_checkpoint(tmp_path / "plain.pt", plain)).eval()
    x = torch.randn(2, 3, 160, 160) * 50
    with torch.no_grad():
        for a, b in zip(loaded(x), loaded_plain(x), strict=True):
            assert torch.equal(a, b)


def test_torchscript_and_onnx_export_of_a_converted_model_ask_for_revert(compiler, tmp_path):
    from singleshot.export import export_onnx, export_torchscript

    model = build_model("ssd160_compact").eval()
    use_winograd(model)
    with pytest.raises(RuntimeError, match="revert_winograd"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation note
        export_torchscript(model, tmp_path / "model.pt")
    # the dynamo exporter wraps the error; its message carries ours
    with pytest.raises(Exception, match="revert_winograd"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    revert_winograd(model)
    assert export_torchscript(model, tmp_path / "model.pt").exists()
