"""Exported files evaluate and detect like the checkpoint they came from, through the command line.

A compact SSD whose heads are fitted to a small synthetic VOC set (a few seconds, no training
run) gives real detections (mAP around 0.3). `singleshot export` writes it as ONNX (with and
without NMS inside), OpenVINO IR and TorchScript; `singleshot eval` and `singleshot detect`,
run in subprocesses as users run them, must give the checkpoint's mAP (within 0.1 point) and
its detections (within the float32 bounds of `tolerances`).
"""

import json
import subprocess
import sys

import pytest
import torch

import singleshot
from ci import openvino_runs
from singleshot.checkpoint import save_checkpoint
from singleshot.data import open_dataset
from singleshot.data.synthetic import write_dataset
from singleshot.export import export_onnx, export_torchscript
from singleshot.inference import preprocess
from singleshot.loss import MultiBoxLoss
from tolerances import network

BOX_DECIMALS, SCORE_DECIMALS = 0.5e-3, 0.5e-5  # detections.json's rounding
MAP_TOLERANCE = 1e-3  # 0.1 point: the bar for a float export
IMAGE_SIDE = 96


def cli(*args, check=True):
    """``singleshot ARGS`` in a subprocess, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "singleshot.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def fit_heads(model, dataset, steps=25):
    """Fit the heads alone (features computed once) to ``dataset``'s images: detections worth
    scoring in seconds. Returns the model in eval mode."""
    images, targets = [], []
    for image, target in (dataset[i] for i in range(len(dataset))):
        height, width = image.shape[-2:]
        images.append(image)
        targets.append(
            {"boxes": target["boxes"] / torch.tensor([width, height] * 2), "labels": target["labels"]}
        )
    with torch.no_grad():
        sources = model.sources(preprocess(images, model.image_size, model.image_mean))
    loss = MultiBoxLoss(model.num_classes)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=3e-3)
    for _ in range(steps):
        loss_loc, loss_conf = loss(*model.head(sources), model.priors, targets)
        optimizer.zero_grad()
        (loss_loc + loss_conf).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return write_dataset(root, "voc", num_train=1, num_test=8, size=IMAGE_SIDE, seed=2, progress=False)


@pytest.fixture(scope="module")
def model(voc):
    dataset = open_dataset(voc, split="test")
    torch.manual_seed(0)
    return fit_heads(singleshot.build_model("ssd160_compact", class_names=list(dataset.classes)), dataset)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """The checkpoint and its exports: the OpenVINO IR and the ONNX graph with NMS by the
    command, the network-only ONNX and the TorchScript (a .pt, like the checkpoint) by the library."""
    folder = tmp_path_factory.mktemp("exports")
    checkpoint = save_checkpoint(folder / "model.pt", model)
    paths = {"checkpoint": checkpoint, "onnx-nms": folder / "nms.onnx", "openvino-nms": folder / "nms.xml"}
    for fmt in ("onnx", "openvino"):
        cli("export", "--checkpoint", checkpoint, "--format", fmt, "--with-postprocess", paths[f"{fmt}-nms"])
    paths["onnx"] = export_onnx(model, folder / "network.onnx")
    paths["torchscript-nms"] = export_torchscript(model, folder / "script.pt", with_postprocess=True)
    return paths


def evaluate(model_file, voc, out, *flags):
    cli("eval", "--checkpoint", model_file, "--data", voc, "--out", out, "--workers", "0", "--no-progress",
        *flags)  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def checkpoint_metrics(files, voc, tmp_path_factory):
    return evaluate(files["checkpoint"], voc, tmp_path_factory.mktemp("eval"))


RUNS = {  # (export, --runtime): what metrics.json names as the runtime
    ("onnx-nms", None): "onnxruntime",
    ("onnx", None): "onnxruntime",
    ("onnx-nms", "openvino"): "openvino",
    ("openvino-nms", None): "openvino",
    ("torchscript-nms", None): "torch",
}


@pytest.mark.parametrize("name, runtime", list(RUNS))
def test_eval_of_an_export_gives_the_checkpoints_map(name, runtime, files, voc, checkpoint_metrics, tmp_path):
    if RUNS[name, runtime] == "openvino" and not openvino_runs():
        pytest.skip("OpenVINO's CPU plugin does not run with oneDNN forced down to SSE4.1")
    assert checkpoint_metrics["map"] > 0.15 and checkpoint_metrics["runtime"] == "torch"  # worth comparing
    metrics = evaluate(files[name], voc, tmp_path, *(["--runtime", runtime] if runtime else []))
    assert metrics["runtime"] == RUNS[name, runtime] and metrics["checkpoint"] == str(files[name])
    assert metrics["score_threshold"] == checkpoint_metrics["score_threshold"] == 0.01
    assert metrics["map"] == pytest.approx(checkpoint_metrics["map"], abs=MAP_TOLERANCE)
    assert metrics["ap"] == pytest.approx(checkpoint_metrics["ap"], abs=MAP_TOLERANCE * len(metrics["ap"]))


def detect(model_file, images, out, threshold, *flags):
    cli("detect", "--checkpoint", model_file, images, "--out", out, "--threshold", threshold, "--no-draw",
        "--no-progress", *flags)  # fmt: skip
    return json.loads((out / "detections.json").read_text())


def assert_same_detections(got, expected, threshold, box_tol, score_tol):
    """Each detection of one file scoring clearly above ``threshold`` (by more than another
    runtime can move a score) is in the other: same image and class, score and box within
    the bounds. Those nearer the threshold may be in one file only."""
    margin = threshold + score_tol + 2 * SCORE_DECIMALS
    for some, others in ((got, expected), (expected, got)):
        for record in (r for r in some if r["score"] > margin):
            twins = [
                other for other in others
                if (other["image_id"], other["category_id"]) == (record["image_id"], record["category_id"])
                and abs(other["score"] - record["score"]) <= 2 * SCORE_DECIMALS + score_tol
                and max(abs(a - b) for a, b in zip(other["bbox"], record["bbox"])) <= box_tol
            ]  # fmt: skip
            assert len(twins) == 1, record


@pytest.fixture(scope="module")
def checkpoint_detections(model, files, voc, tmp_path_factory):
    """(threshold, bounds, the checkpoint's detections.json) on the test images.

    The checkpoint runs with --no-winograd: Winograd's bound is 16x the direct convolution's
    (test_cli_detect compares the two), too wide to compare runtimes through.
    """
    dataset = open_dataset(voc, split="test")
    pixels = [dataset[i][0] for i in range(len(dataset))]
    with torch.no_grad():
        loc, conf = model(preprocess(pixels, model.image_size, model.image_mean))
    # both runs err within `network`'s bound: twice it between them; softmax moves by <= 1/2
    # the logits' change, and a loc change moves a box by <= 0.2 of its prior's size (< 1)
    # times the image's side
    score_tol = 2 * network(model, conf.abs().max().item())
    box_tol = 2 * BOX_DECIMALS + 0.2 * IMAGE_SIDE * 2 * network(model, loc.abs().max().item())
    threshold = 0.3
    out = tmp_path_factory.mktemp("detect")
    expected = detect(files["checkpoint"], voc / "JPEGImages", out, threshold, "--no-winograd")
    assert sum(r["score"] > threshold + score_tol for r in expected) >= 2 * len(pixels)  # worth comparing
    return threshold, (box_tol, score_tol), expected


@pytest.mark.parametrize("name", ["onnx", "openvino-nms"])
def test_detect_on_an_export_writes_the_checkpoints_detections(
    name, files, voc, checkpoint_detections, tmp_path
):
    if name.startswith("openvino") and not openvino_runs():
        pytest.skip("OpenVINO's CPU plugin does not run with oneDNN forced down to SSE4.1")
    threshold, (box_tol, score_tol), expected = checkpoint_detections
    got = detect(files[name], voc / "JPEGImages", tmp_path, threshold)
    assert all(r["score"] > threshold for r in got)
    assert_same_detections(got, expected, threshold, box_tol, score_tol)
