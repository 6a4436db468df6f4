"""The demo pipeline at toy scale: every output is written and every number is the run's own."""

import json
import os
import subprocess
import sys

import singleshot
from singleshot.cli import main
from singleshot.data import open_dataset
from singleshot.evaluation import evaluate_model
from singleshot.evaluation.report import REQUIRED_KEYS
from singleshot.presets import available_models
from singleshot.training import load_recipe
from singleshot.training.demo import DemoOptions, run_demo
from singleshot.training.logging import read_log


def test_demo_recipe_trains_a_listed_compact_preset_on_the_synthetic_splits():
    config = load_recipe("demo_compact")
    assert config.model in available_models()
    assert (config.train_split, config.val_split, config.eval_metric) == ("train", "test", "voc07")
    assert config.device == "cpu"


def test_demo_writes_its_outputs_and_reports_measured_numbers(tmp_path):
    out = tmp_path / "demo"
    options = DemoOptions(
        out=str(out), num_train=16, num_test=6, image_size=64, iterations=3, workers=0,
        num_pictures=2, progress=False, overrides=["batch_size=4", "log_every=1"],
    )  # fmt: skip
    summary = run_demo(options)
    for name in ("last.pt", "log.jsonl", "loss_curve.png", "pr_curves.png", "metrics.json", "summary.txt"):
        assert (out / name).is_file(), name
    assert len(list((out / "detections").glob("*.png"))) == 2
    assert summary.iterations == 3

    # metrics.json holds the run's mAP, which re-evaluating the saved model reproduces
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["map"] == summary.map
    assert metrics["num_train_images"] == 16 and metrics["num_test_images"] == 6
    model = singleshot.load(out / "last.pt")
    test_split = open_dataset(out / "data", split="test")
    again = evaluate_model(model, test_split, metric="voc07", progress=False)
    assert again["map"] == metrics["map"]  # the same model and data: the same arithmetic
    # an AP for exactly the classes with (non-difficult) objects in the test split, each reproduced
    present = set()
    for index in range(len(test_split)):
        target = test_split[index][1]
        present |= {int(label) for label, hard in zip(target["labels"], target["difficult"]) if not hard}
    names = model.class_names
    assert present and set(metrics["ap"]) == {names[label] for label in present}
    for label in present:
        assert metrics["ap"][names[label]] == again["ap"][label]

    # `singleshot eval` on the demo's checkpoint and test split writes the same schema, same numbers
    evaluated = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(out / "data"), "--out",
                 str(evaluated), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    by_eval = json.loads((evaluated / "metrics.json").read_text())
    shared = set(REQUIRED_KEYS) | {"num_ground_truth", "num_detections", "true_positives", "iou_threshold"}
    assert shared <= set(metrics) and shared <= set(by_eval)
    assert "curves" not in metrics and "curves" not in by_eval
    for key in ("metric", "map", "ap", "num_images", "num_ground_truth", "split", "data"):
        assert metrics[key] == by_eval[key], key
    assert metrics["num_images"] == metrics["num_test_images"] == 6
    assert metrics["checkpoint"] == by_eval["checkpoint"] == str(out / "last.pt")

    # the loss curve comes from the log of this run
    records = read_log(out / "log.jsonl", kind="train")
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert metrics["final_loss"] == records[-1]["loss"]
    assert f"{summary.map:.4f}" in (out / "summary.txt").read_text()

    # a second run reuses the dataset (same parameters) and replaces the previous outputs
    marker = (out / "data" / "synthetic.json").stat().st_mtime_ns
    run_demo(options)
    assert (out / "data" / "synthetic.json").stat().st_mtime_ns == marker
    assert [r["iteration"] for r in read_log(out / "log.jsonl", kind="train")] == [1, 2, 3]


def test_demo_model_option_trains_ssdlite_through_the_command(tmp_path):
    out = tmp_path / "lite"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["demo", "--model", "ssdlite320_voc", "--out", str(out), "--num-train", "8", "--num-test", "4",
            "--image-size", "64", "--iterations", "2", "--workers", "0", "--num-pictures", "1",
            "--set", "batch_size=4", "--no-progress"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "singleshot.cli", *args], env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    model = singleshot.load(out / "last.pt")
    assert model.preset == "ssdlite320_voc" and model.image_size == 320
    assert json.loads((out / "metrics.json").read_text())["num_test_images"] == 4
    refused = subprocess.run([sys.executable, "-m", "singleshot.cli", "demo", "--model", "ssd300_voc"],
                             env=environment, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "invalid choice: 'ssd300_voc'" in refused.stderr
