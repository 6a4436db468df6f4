"""SSDLite through the public API and the CLI: predict, detect, eval, ONNX and TorchScript with NMS."""

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

import singleshot
from detection_checks import assert_same_detections, gap_threshold
from singleshot.boxes import fractions_to_pixels
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.data import open_dataset
from singleshot.evaluation import evaluate_model
from singleshot.export import OnnxDetector, TorchScriptDetector, export_onnx, export_torchscript, runtime
from singleshot.inference import preprocess
from singleshot.postprocess import class_probabilities, detect
from test_cli_eval import CLASSES, write_voc
from tolerances import network, rounding


def make_model():
    """ssdlite320_voc (3 classes) whose random weights carry a signal to spread-out scores."""
    torch.manual_seed(0)
    model = singleshot.build_model("ssdlite320_voc", class_names=CLASSES)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for k in range(len(model.head.conf)):
            model.head.conf[k].predict.weight.mul_(0.15)
            model.head.conf[k].predict.bias.view(-1, 3)[:, 0] += 1.5  # mostly background
            model.head.loc[k].predict.weight.mul_(0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in [(48, 64), (70, 40)]]


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ssdlite") / "model.pt", model)


def tolerances(model, images):
    """Box (pixels) and score bounds for the same network run by other kernels: softmax moves
    by <= 1/2 the logits' change; a loc change moves a box by <= 0.2 of its prior (<= 1) times
    the image's side (<= 70 px), plus the decode's own rounding."""
    x = preprocess(images, 320, model.image_mean, std=model.image_std)
    with torch.no_grad():
        loc, conf = model(x)
    box = 70 * (0.2 * network(model, loc.abs().max().item()) + rounding(1.5, ops=4))
    return box, network(model, conf.abs().max().item())


def scores_gap(model, images):
    """A score threshold in a gap of ``model``'s scores on ``images`` (ranks 5 to 60)."""
    return gap_threshold(model.predict(images, score_threshold=0.01, max_detections=None), low=5, high=60)


def test_predict_uses_the_preset_normalisation_and_postprocessing(model, images):
    results = model.predict(images)
    x = preprocess(images, 320, (127.5,) * 3, std=(127.5,) * 3)
    assert x.min() >= -1 and x.max() <= 1
    with torch.no_grad():
        loc, conf = model(x)
    expected = detect(loc, class_probabilities(conf), model.priors, 0.001, 0.55, 300, 300, clip=True)
    for result, det, image in zip(results, expected, images):
        height, width = image.shape[-2:]
        assert len(result["scores"]) == 300  # score 0.001 keeps many: the cap of 300 binds
        assert torch.equal(result["boxes"], fractions_to_pixels(det["boxes"], height, width))
        assert torch.equal(result["scores"], det["scores"]) and torch.equal(result["labels"], det["labels"])
        assert set(result["labels"].tolist()) == {1, 2}
        assert (result["boxes"][:, 2:] <= torch.tensor([width, height])).all() and (
            result["boxes"] >= 0
        ).all()


def test_detect_cli_equals_predict(model, checkpoint, images, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"image{i}.png")
    threshold = scores_gap(model, images)
    out = tmp_path / "out"
    code = main(["detect", "--checkpoint", str(checkpoint), str(folder), "--out", str(out),
                 "--threshold", str(threshold), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "detections.json").read_text())
    box_tol, score_tol = tolerances(model, images)
    for i, image in enumerate(images):
        expected = model.predict(image, score_threshold=threshold)[0]
        got = [r for r in results if r["image_id"] == f"image{i}.png"]
        assert len(got) == len(expected["scores"]) > 3
        for r, box, score in zip(got, expected["boxes"], expected["scores"]):
            x1, y1, x2, y2 = box.tolist()
            assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.5e-3 + 2 * box_tol)
            assert r["score"] == pytest.approx(float(score), abs=0.5e-5 + score_tol)


def test_eval_cli_equals_the_library(checkpoint, tmp_path, capsys):
    data = write_voc(tmp_path / "VOCsmall")
    out = tmp_path / "out"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--metric", "voc07",
                 "--out", str(out), "--batch-size", "2", "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    model = singleshot.load(checkpoint)
    expected = evaluate_model(model, open_dataset(data, split="test"), "voc07", batch_size=3, progress=False)
    assert set(metrics["ap"]) == {"cat", "dog"}
    assert metrics["map"] == pytest.approx(expected["map"], abs=1e-12)
    assert metrics["ap"]["cat"] == pytest.approx(expected["ap"][1], abs=1e-12)


SETTINGS = dict(nms_threshold=0.55, pre_nms_top_k=300, max_detections=300, clip=True)


def test_onnx_detector_equals_predict(model, images, tmp_path):
    threshold = scores_gap(model, images)
    path = export_onnx(
        model, tmp_path / "ssdlite.onnx", with_postprocess=True, score_threshold=threshold, **SETTINGS
    )
    runner = OnnxDetector(path, threads=2)
    assert runner.image_size == 320 and runner.image_std == (127.5,) * 3
    assert_same_detections(
        runner.predict(images), model.predict(images, score_threshold=threshold), *tolerances(model, images)
    )


def test_torchscript_detector_equals_predict(model, images, tmp_path):
    threshold = scores_gap(model, images)
    # only the score threshold given: the rest are the model's own (SETTINGS), as in predict
    path = export_torchscript(
        model, tmp_path / "ssdlite.pt", with_postprocess=True, score_threshold=threshold
    )
    detector = TorchScriptDetector(path)
    assert detector.metadata["postprocess"] == {**SETTINGS, "score_threshold": threshold}
    # the traced graph runs the same kernels on the same tensors: the same detections
    expected = model.predict(images, score_threshold=threshold)
    assert_same_detections(detector.predict(images), expected, box_tol=0, score_tol=0)


def test_export_cli_takes_the_models_postprocessing(model, checkpoint, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "net.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", str(out)]) == 0
    network_only = TorchScriptDetector(out)
    assert network_only.metadata["postprocess"] is None
    assert network_only.metadata["model_postprocess"] == {**SETTINGS, "score_threshold": 0.001}
    # a network-only file is post-processed in PyTorch with the model's settings (NMS 0.55, clip)
    used = {}

    def recording_detect(*args, **settings):
        used.update(settings)
        return detect(*args, **settings)

    monkeypatch.setattr(runtime, "detect", recording_detect)
    threshold = scores_gap(model, images)
    expected = model.predict(images, score_threshold=threshold)
    got = network_only.predict(images, score_threshold=threshold)
    assert_same_detections(got, expected, *tolerances(model, images))
    assert used == {**SETTINGS, "score_threshold": threshold}
    out = tmp_path / "detector.pt"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--with-postprocess"]
    assert main([*argv, "--nms-threshold", "0.5", "--no-clip", str(out)]) == 0
    expected = {**SETTINGS, "score_threshold": 0.001, "nms_threshold": 0.5, "clip": False}
    assert TorchScriptDetector(out).metadata["postprocess"] == expected
