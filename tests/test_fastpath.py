"""`singleshot.fastpath`: the inference-only fused copy equals the model, which it leaves alone,
and `detect` / `eval` run it on the CPU unless --no-fast."""

import json

import pytest
import torch
from torch import nn

import singleshot
from detection_checks import assert_same_detections
from singleshot import fastpath
from singleshot.cli import main
from singleshot.fastpath import PooledLinear, fuse_batch_norms, fuse_for_inference, pooled_to_linear
from singleshot.inference import preprocess
from test_cli_eval import write_voc
from test_ssdlite_api import make_model, scores_gap, tolerances
from tolerances import network


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in [(60, 80), (50, 45)]]


def test_fused_copy_leaves_the_model_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fuse_for_inference(model)
    assert fused is not model and norms > 50
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # the eight squeeze-excitation blocks of MobileNetV3-Large, two convolutions each
    assert sum(isinstance(m, PooledLinear) for m in fused.modules()) == 16
    assert not any(p.requires_grad for p in fused.parameters())
    assert fused.class_names == model.class_names and fused.postprocess == model.postprocess


def test_fused_network_equals_the_model_within_float32_rounding(model, images):
    fused = fuse_for_inference(model)
    x = preprocess(images, 320, model.image_mean, std=model.image_std)
    with torch.no_grad():
        (loc, conf), (fused_loc, fused_conf) = model(x), fused(x)
    # folding BatchNorm rounds the scaled weights once: within the network's float32 bound
    torch.testing.assert_close(fused_loc, loc, atol=network(model, loc.abs().max().item()), rtol=0)
    torch.testing.assert_close(fused_conf, conf, atol=network(model, conf.abs().max().item()), rtol=0)
    assert not torch.equal(fused_conf, conf) or not torch.equal(fused_loc, loc)  # other arithmetic


def test_fused_predict_equals_predict(model, images):
    threshold = scores_gap(model, images)
    expected = model.predict(images, score_threshold=threshold)
    got = fuse_for_inference(model).predict(images, score_threshold=threshold)
    assert_same_detections(got, expected, *tolerances(model, images))


def test_batch_norm_fusion_matches_torch_on_a_plain_stack():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    with torch.no_grad():
        stack[1].running_mean.uniform_(-1, 1)
        stack[1].running_var.uniform_(0.5, 2)
        stack[1].weight.uniform_(0.5, 1.5)
    stack.eval()
    x = torch.randn(2, 3, 9, 9)
    expected = stack(x)
    assert fuse_batch_norms(stack) == ["0"]
    assert isinstance(stack[1], nn.Identity) and stack[0].bias is not None
    torch.testing.assert_close(stack(x), expected, atol=1e-5, rtol=0)


def test_pooled_linear_equals_the_convolution_and_falls_back_on_larger_maps():
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 5, 1)
    linear = PooledLinear(conv)
    for shape in [(3, 12, 1, 1), (2, 12, 4, 3)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(linear(x), conv(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1x1"):
        PooledLinear(nn.Conv2d(12, 5, 3))
    # only squeeze-excitation convolutions (after a global average pool) are replaced
    assert pooled_to_linear(nn.Sequential(nn.Conv2d(3, 3, 1))) == []


def test_vgg_models_fuse_their_batch_norm_extras_only():
    model = singleshot.build_model("ssd300_voc").eval()
    fused = fuse_for_inference(model)
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules()
    )
    x = torch.rand(1, 3, 300, 300) * 100
    with torch.no_grad():
        for a, b in zip(fused(x), model(x)):
            torch.testing.assert_close(a, b, atol=network(model, b.abs().max().item()), rtol=0)


@pytest.mark.parametrize("flag", [None, "--fast", "--no-fast"])
def test_eval_runs_the_fused_copy_unless_told_not_to(flag, model, tmp_path, monkeypatch, capsys):
    from singleshot.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    calls = []
    original = fastpath.fuse_batch_norms  # what optimize_for_inference folds BatchNorm with
    monkeypatch.setattr(fastpath, "fuse_batch_norms", lambda m: calls.append(1) or original(m))
    data = write_voc(tmp_path / "VOCsmall")
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--metric", "voc07",
            "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(argv + ([flag] if flag else [])) == 0, capsys.readouterr().err
    assert len(calls) == (0 if flag == "--no-fast" else 1)
    assert 0 <= json.loads((tmp_path / "out" / "metrics.json").read_text())["map"] <= 1


def test_openvino_runs_the_onnx_detector_as_predict(model, images, tmp_path):
    import importlib.util

    from ci import openvino_runs, require

    require(importlib.util.find_spec("onnxruntime") is not None, "onnxruntime")
    if not openvino_runs():
        pytest.skip("OpenVINO's CPU plugin does not run with oneDNN forced down to SSE4.1")
    from singleshot.export import OpenVinoDetector, export_onnx

    threshold = scores_gap(model, images)
    settings = dict(nms_threshold=0.55, pre_nms_top_k=300, max_detections=300, clip=True)
    path = export_onnx(
        model, tmp_path / "ssdlite.onnx", with_postprocess=True, score_threshold=threshold, **settings
    )
    detector = OpenVinoDetector(path, threads=2)
    assert detector.with_postprocess and detector.image_std == (127.5,) * 3
    expected = model.predict(images, score_threshold=threshold)
    assert_same_detections(detector.predict(images), expected, *tolerances(model, images))
