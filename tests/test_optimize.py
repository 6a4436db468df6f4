"""`SSD.optimize_for_inference`: a copy with the same detections to float32 rounding, the
original untouched, training and saving refused, the Winograd fallback, and ``detect``
running the same copy.

Run it also with the kernels held down (``ATEN_CPU_CAPABILITY=default
DNNL_MAX_CPU_ISA=SSE41``): the tolerances are float32 bounds, not one machine's figures.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import singleshot
from ci import require
from detection_checks import assert_same_detections, gap_threshold
from singleshot.checkpoint import save_checkpoint
from singleshot.fastpath import fuse_for_inference
from singleshot.imageio import read_image
from singleshot.inference import preprocess
from singleshot.layout import trial
from singleshot.optimize import InferenceOptimizations, WinogradUnavailableWarning
from singleshot.winograd import KernelBuildError, WinogradConv2d
from singleshot.winograd import build as kernel_build
from test_ssdlite_api import make_model as make_ssdlite
from tolerances import WINOGRAD_GAIN, network, rounding

CLASSES = ["__background__", "cat", "dog"]
SRC = Path(__file__).resolve().parents[1] / "src"
# detections.json rounds boxes to 3 decimals and scores to 5
BOX_DECIMALS, SCORE_DECIMALS = 0.5e-3, 0.5e-5


@pytest.fixture
def compiler():
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")


def with_signal(model, conf_scale, background, loc_scale):
    """``model`` with spread-out scores (a few confident detections per image) and, where it
    has BatchNorm, running statistics far from the identity, so that folding them matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
        for conv in model.head.conf:
            conv.weight.mul_(conf_scale)
            conv.bias.view(-1, model.num_classes)[:, 0] += background
        for conv in model.head.loc:
            conv.weight.mul_(loc_scale)
    return model.eval()


def compact():
    torch.manual_seed(0)
    return with_signal(singleshot.build_model("ssd160_compact", class_names=CLASSES), 0.2, 4.0, 0.05)


def ssd300():
    torch.manual_seed(0)
    return with_signal(singleshot.build_model("ssd300_voc", class_names=CLASSES), 0.3, 2.5, 0.1)


MODELS = {"ssd160_compact": compact, "ssd300_voc": ssd300, "ssdlite320_voc": make_ssdlite}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in [(48, 64), (70, 40)]]


def outputs(model, images):
    x = preprocess(images, model.image_size, model.image_mean, std=model.image_std)
    with torch.no_grad():
        return model(x)


def tolerances(model, images, gain):
    """Box (pixels) and score bounds for the network computed in another order (`network`,
    times ``gain`` for Winograd's larger rounding): softmax moves by <= 1/2 the logits'
    change; a loc change moves a box by <= 0.2 of its prior (<= 1) times the image's side,
    plus the decode's own rounding."""
    loc, conf = outputs(model, images)
    side = max(max(image.shape[-2:]) for image in images)
    box = side * (0.2 * gain * network(model, loc.abs().max().item()) + rounding(1.5, ops=4))
    return box, gain * network(model, conf.abs().max().item())


def state(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_bit_equal(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())


# VGG16's 3x3 convolutions with 64+ channels: conv1_2 ... conv5_3; the head's predictors with
# 256+ inputs and 24+ outputs on the 38x38, 19x19 and 10x10 maps: with 3 classes only loc.1 and
# loc.2 (6 boxes x 4), not loc.0 (4 x 4) nor any conf (4 or 6 boxes x 3 classes)
VGG_BACKBONE_WINOGRAD = [
    f"backbone.to_conv4_3.conv{n}" for n in ("1_2", "2_1", "2_2", "3_1", "3_2", "3_3", "4_1", "4_2", "4_3")
] + [f"backbone.to_conv7.conv5_{i}" for i in (1, 2, 3)]
VGG_WINOGRAD = VGG_BACKBONE_WINOGRAD + ["head.loc.1", "head.loc.2"]
# what each model's copy has on a CPU with a C compiler: BatchNorms folded (None: all),
# squeeze-excitation convolutions as matrix products, Winograd convolutions
EXPECTED = {
    "ssd160_compact": (
        14,
        0,
        ["backbone.to_stride8.4.conv", "backbone.to_stride8.5.conv", "backbone.to_stride16.1.conv"],
    ),
    "ssd300_voc": (0, 0, VGG_WINOGRAD),  # no BatchNorm in VGG16 or its extras
    "ssdlite320_voc": (None, 16, []),  # MobileNetV3: depthwise convolutions are not for Winograd
}


def nchw_wins(layout, step):
    """A trial timer under which NCHW is faster, without running the steps."""
    return 0.25 if layout == "channels_last" else 0.125


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_copy_predicts_the_originals_detections(compiler, name, images, monkeypatch, tmp_path):
    model = MODELS[name]()
    images = images[:1] if name == "ssd300_voc" else images  # SSD300's forward is the slow part
    if name == "ssdlite320_voc":  # Winograd makes the others channels-last; a fake trial picks NCHW here
        monkeypatch.setattr(trial, "time_step", nchw_wins)
        monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path))
    before = state(model)
    expected = model.predict(images, score_threshold=0.01, max_detections=None)
    threshold = gap_threshold(expected)
    fast = model.optimize_for_inference(batch_size=len(images))  # the tile schedules are timed at it
    report = fast.optimizations
    norms, linears, winograd = EXPECTED[name]
    norm_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(report.fused_batch_norms) == (norm_count if norms is None else norms)
    assert len(report.pooled_linears) == linears and list(report.winograd_convs) == winograd
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == len(winograd)
    assert report.winograd_fallback is None and report.device == "cpu" and report.dtype == "torch.float32"
    if winograd:
        assert report.layout.channels_last and report.layout.source == "forced"
    else:
        assert report.layout.source == "measured" and not fast.channels_last  # as nchw_wins says

    got = fast.predict(images, score_threshold=threshold)
    gain = WINOGRAD_GAIN if winograd else 1
    assert_same_detections(
        got, model.predict(images, score_threshold=threshold), *tolerances(model, images, gain)
    )
    assert_bit_equal(model, before)  # predicting with either changed nothing


def test_the_head_predictors_by_winograd_are_the_wide_ones_on_large_maps(compiler):
    # SSD300 with VOC's 21 classes: conf 4 x 21 on 38x38, loc 6 x 4 and conf 6 x 21 on 19x19 and
    # 10x10; loc.0 has 16 outputs, and the maps from 5x5 down are too small
    model = singleshot.build_model("ssd300_voc", num_classes=21)
    fast = model.optimize_for_inference(channels_last=True, batch_size=1)  # its tuning is the quickest
    heads = [name for name in fast.optimizations.winograd_convs if name.startswith("head.")]
    assert heads == ["head.loc.1", "head.loc.2", "head.conf.0", "head.conf.1", "head.conf.2"]
    assert list(fast.optimizations.winograd_convs[: len(VGG_BACKBONE_WINOGRAD)]) == VGG_BACKBONE_WINOGRAD
    assert all(isinstance(fast.get_submodule(name), WinogradConv2d) for name in heads)
    assert isinstance(fast.head.loc[0], nn.Conv2d) and isinstance(fast.head.conf[3], nn.Conv2d)


@pytest.mark.parametrize("channels_last", [True, False])
def test_forced_layouts_give_the_same_network_outputs(channels_last, images):
    model = compact()
    fast = model.optimize_for_inference(winograd=False, channels_last=channels_last)
    assert fast.optimizations.layout.source == "forced" and fast.channels_last is channels_last
    assert fast.backbone.to_stride16[1].conv.weight.is_contiguous(memory_format=torch.channels_last) is (
        channels_last
    )
    for got, expected in zip(outputs(fast, images), outputs(model, images)):
        # BatchNorm folded (one rounding per weight) and another summation order: the network's bound
        torch.testing.assert_close(got, expected, atol=network(model, expected.abs().max().item()), rtol=0)


def test_the_original_is_untouched_and_keeps_training(images):
    model = compact().train()
    before = state(model)
    types = [type(m) for m in model.modules()]
    fast = model.optimize_for_inference(winograd=False, channels_last=True)
    assert fast is not model
    assert_bit_equal(model, before)
    assert [type(m) for m in model.modules()] == types
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()) and model.optimizations is None
    assert not model.backbone.to_stride16[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the copy computes what the original computes in eval mode (its BatchNorm's running statistics)
    for got, expected in zip(outputs(fast, images), outputs(model.eval(), images)):
        torch.testing.assert_close(got, expected, atol=network(model, expected.abs().max().item()), rtol=0)
    loc, conf = model.train()(preprocess(images, 160, model.image_mean))  # it still trains: gradients flow
    (loc.square().mean() + conf.square().mean()).backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_the_copy_is_for_inference_only(tmp_path):
    model = compact()
    fast = model.optimize_for_inference(winograd=False, channels_last=True)
    assert not fast.training and not any(m.training for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(
        RuntimeError, match="inference-only copy made by optimize_for_inference .*; train the model"
    ):
        fast.train()
    assert fast.eval() is fast  # eval() is train(False): allowed
    with pytest.raises(ValueError, match="already an inference-only copy"):
        fast.optimize_for_inference()
    with pytest.raises(ValueError, match=f"{tmp_path / 'fast.pt'}: this model is an inference-only copy"):
        save_checkpoint(tmp_path / "fast.pt", fast)
    assert not (tmp_path / "fast.pt").exists()
    assert singleshot.load(save_checkpoint(tmp_path / "model.pt", model)).optimizations is None


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_exports_refuse_the_copy_and_take_the_original(tmp_path):
    from singleshot.export import export_onnx, export_torchscript

    model = compact()
    fast = model.optimize_for_inference(winograd=False, channels_last=True)
    example = torch.zeros(1, 3, 160, 160)
    refusal = "inference-only copy made by optimize_for_inference .*; export the model it was made from"
    with pytest.raises(RuntimeError, match=refusal):
        export_torchscript(fast, tmp_path / "fast.ts")
    with pytest.raises(RuntimeError, match=refusal) as refused:
        export_onnx(fast, tmp_path / "fast.onnx")
    assert str(refused.value).startswith("this model is an inference-only copy")  # not the exporter's
    with pytest.raises(RuntimeError, match=refusal):
        torch.export.export(fast, (example,))
    assert not (tmp_path / "fast.ts").exists() and not (tmp_path / "fast.onnx").exists()
    path = export_torchscript(model, tmp_path / "model.ts")  # the original exports as ever
    with torch.no_grad():
        expected = fast(example)
        for got, want in zip(torch.jit.load(str(path))(example), expected):
            torch.testing.assert_close(got, want, atol=network(model, want.abs().max().item()), rtol=0)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine without a C compiler: nothing built, nothing loaded in this process."""
    monkeypatch.setattr(kernel_build, "_loaded", None)
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler-here")


def test_without_a_compiler_the_copy_runs_direct_convolutions_with_a_warning(no_compiler, images):
    model = compact()
    before = state(model)
    with pytest.warns(WinogradUnavailableWarning, match="direct convolutions: .*need a C compiler"):
        fast = model.optimize_for_inference(channels_last=True)
    report = fast.optimizations
    assert report.winograd_convs == () and "no-such-compiler-here" in report.winograd_fallback
    assert "direct convolutions (" in report.describe()
    assert not any(isinstance(m, WinogradConv2d) for m in fast.modules())
    direct = model.optimize_for_inference(winograd=False, channels_last=True)
    for got, expected in zip(outputs(fast, images), outputs(direct, images)):
        assert torch.equal(got, expected)  # the same conversions, the same arithmetic
    with pytest.raises(KernelBuildError, match="need a C compiler"):
        model.optimize_for_inference(winograd=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # winograd=False asks for nothing: no warning
        model.optimize_for_inference(winograd=False, channels_last=True)
    assert_bit_equal(model, before)


def test_the_layout_trial_times_the_converted_copy(monkeypatch, tmp_path):
    seen = []

    def timer(layout, step):
        seen.append(layout)
        return nchw_wins(layout, step)

    monkeypatch.setattr(trial, "time_step", timer)
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path))  # no decision cached yet
    fast = compact().optimize_for_inference(winograd=False, batch_size=3)
    layout = fast.optimizations.layout
    assert layout.source == "measured" and not layout.channels_last and not fast.channels_last
    assert (
        layout.trial_batch == 3
        and layout.mode == "inference"
        and set(seen) == {"channels_last", "contiguous"}
    )
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        compact().optimize_for_inference(batch_size=0)


def test_off_the_cpu_only_the_layout_is_chosen_unless_asked():
    model = compact().to("meta")  # any device that is not the CPU
    fast = model.optimize_for_inference(channels_last=True)
    report = fast.optimizations
    assert report.device == "meta" and report.fused_batch_norms == () and report.winograd_convs == ()
    assert report.winograd_fallback is None and any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert (
        len(model.optimize_for_inference(fuse=True, channels_last=True).optimizations.fused_batch_norms) == 14
    )
    with pytest.raises(ValueError, match="winograd=True: Winograd convolutions are for float32 on the CPU"):
        model.optimize_for_inference(winograd=True, channels_last=True)


def test_a_float16_copy_folds_batch_norm_in_float32_first():
    model = compact()
    half = model.optimize_for_inference(fuse=True, dtype=torch.float16, channels_last=False)
    assert half.optimizations.dtype == "torch.float16" and half.optimizations.winograd_convs == ()
    reference = fuse_for_inference(model).half()  # fold in float32, then round once to float16
    got, expected = half.state_dict(), reference.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())
    assert half.priors.dtype == torch.float32  # as SSD keeps them
    with pytest.raises(ValueError, match="winograd=True: .* torch.float16 on cpu"):
        model.optimize_for_inference(winograd=True, dtype=torch.float16)


def test_the_description_names_what_was_done(compiler):
    report = compact().optimize_for_inference().optimizations
    assert isinstance(report, InferenceOptimizations)
    assert report.describe() == (
        "cpu, torch.float32: BatchNorm folded into 14 convolutions, 3 convolutions by Winograd, "
        "channels-last (forced by the Winograd convolutions, no trial)"
    )
    one = dataclasses.replace(report, winograd_convs=report.winograd_convs[:1])
    assert ", 1 convolution by Winograd, " in one.describe()


def write_images(folder):
    g = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for name, (height, width) in [("a.png", (60, 90)), ("b.png", (75, 50))]:
        Image.fromarray(g.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def test_detect_runs_the_copy_a_python_user_gets(compiler, tmp_path):
    model = compact()
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    paths = write_images(tmp_path / "images")
    fast = singleshot.load(checkpoint).optimize_for_inference()
    threshold = gap_threshold(fast.predict(paths, score_threshold=0.01, max_detections=None))
    expected = [record for path, det in zip(paths, fast.predict(paths, score_threshold=threshold))
                for record in det.to_json(image_id=path.name)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "singleshot.cli", "detect", "--checkpoint", str(checkpoint),
               str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--threshold", str(threshold),
               "--no-draw", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(got) == len(expected) >= 3
    # other process, same machine and conversions: equal but for the file's rounding and threads' order
    box_tol, score_tol = tolerances(model, [read_image(p) for p in paths], WINOGRAD_GAIN)
    for a, b in zip(got, expected):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert math.isclose(a["score"], b["score"], abs_tol=2 * SCORE_DECIMALS + score_tol)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=2 * BOX_DECIMALS + 2 * box_tol)
