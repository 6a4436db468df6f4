"""Training SSDLite320: the shipped recipe through the command, exact resume, fine-tuning
from an SSDLite checkpoint, default-box coverage. (DDP: test_ddp.py; the augmentation
without colour distortion and zoom-out: test_augment.py.)

Tiny runs on 64 px synthetic data: SSDLite's 320 px input costs ~0.6 GFLOP per image, so
batch 2 and 2-4 iterations.
"""

import json
import subprocess
import sys

import pytest
import torch

import singleshot
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.data.synthetic import write_dataset
from singleshot.training import TrainConfig
from singleshot.training.setup import build_training_model, class_logit_tensors, init_from_detector
from test_cli_reproducible import assert_same_run, kill_after_first_checkpoint, run_to_end

BG = "__background__"
TINY = ["--batch-size", "2", "--device", "cpu", "--no-progress", "--train-split", "train"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("coco"), "coco", num_train=6, num_test=2, size=64, seed=5)


def train_command(data, out, *extra):
    return [
        sys.executable, "-m", "singleshot.cli", "train", "--config", "ssdlite320_coco", "--data", str(data),
        "--out", str(out), *TINY, *extra,
    ]  # fmt: skip


def test_recipe_trains_evaluates_and_saves_an_ssdlite_through_the_command(coco, tmp_path):
    done = run_to_end(train_command(coco, tmp_path, "--iterations", "2", "--val-split", "test",
                                    "--eval-every", "2", "--log-every", "1"))  # fmt: skip
    assert "best checkpoint" in done.stdout
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if r["kind"] != "layout"]  # the run's memory format, first
    assert [(r["kind"], r["iteration"]) for r in records] == [("train", 1), ("train", 2), ("eval", 2)]
    assert records[-1]["metric"] == "coco" and 0 <= records[-1]["map"] <= 1
    # the recipe's warm-up: 0.15 x (0.001 + (1 - 0.001) x i / 609) at iteration i = 0
    assert records[0]["lr"] == pytest.approx(0.15 * 0.001, rel=1e-9)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    config = checkpoint["training"]["config"]
    assert config["augment"] == {"photometric": False, "expand": False} and config["iterations"] == 2
    model = singleshot.load(tmp_path / "last.pt")
    assert checkpoint["model"]["preset"] == "ssdlite320_coco" and model.image_size == 320
    assert type(model.head).__name__ == "SSDLiteHead" and model.backbone.part_name == "mobilenet_v3_large"
    classes = json.loads((coco / "annotations" / "instances_train.json").read_text())["categories"]
    assert model.class_names[1:] == [c["name"] for c in classes]


def test_killed_and_resumed_run_equals_an_uninterrupted_one(coco, tmp_path):
    extra = ["--iterations", "3", "--checkpoint-every", "1", "--val-split", "none", "--eval-every", "0"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_to_end(train_command(coco, whole, *extra))
    assert 0 < kill_after_first_checkpoint(train_command(coco, killed, *extra), killed) < 4
    run_to_end([sys.executable, "-m", "singleshot.cli", "train", "--resume", str(killed / "last.pt"),
                "--no-progress"])  # fmt: skip
    assert_same_run(whole / "last.pt", killed / "last.pt")


def ssdlite(names):
    return singleshot.build_model("ssdlite320_voc", class_names=[BG, *names])


def test_init_from_keeps_all_but_new_classes_predictors_and_reorders_them_by_name(tmp_path):
    torch.manual_seed(0)
    source = ssdlite(["cat", "dog", "bird"])
    with torch.no_grad():  # BatchNorm statistics away from their initial values, so that copying shows
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.25)
    predictors = class_logit_tensors(source)
    assert predictors == {f"head.conf.{k}.predict.{p}" for k in range(6) for p in ("weight", "bias")}
    reordered = ssdlite(["bird", "cat", "dog"]).eval()
    assert init_from_detector(reordered, source.state_dict(), names=[BG, "cat", "dog", "bird"]) == []
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        (loc_a, conf_a), (loc_b, conf_b) = source.eval()(x), reordered(x)
    assert torch.equal(loc_b, loc_a) and torch.equal(conf_b, conf_a[..., [0, 3, 1, 2]])

    save_checkpoint(tmp_path / "source.pt", source)
    config = TrainConfig(model="ssdlite320_voc", init_from=str(tmp_path / "source.pt"), seed=3)
    tuned = build_training_model(config, [BG, "horse", "cat"]).state_dict()
    torch.manual_seed(3)
    fresh = ssdlite(["horse", "cat"]).state_dict()
    reference = source.state_dict()
    for name, tensor in tuned.items():
        if name in predictors:  # background and cat by name (source 0, 1), horse fresh
            assert tensor.shape[0] == reference[name].shape[0] // 4 * 3
            mine, theirs = (t.reshape(-1, n, *t.shape[1:]) for t, n in ((tensor, 3), (reference[name], 4)))
            assert torch.equal(mine[:, [0, 2]], theirs[:, [0, 1]])
            assert torch.equal(mine[:, 1], fresh[name].reshape(mine.shape)[:, 1]), name
        else:  # backbone, extras, box heads and the class heads' depthwise blocks, BatchNorm included
            assert torch.equal(tensor, reference[name]), name


def test_data_coverage_uses_ssdlites_default_boxes(coco):
    from singleshot.data import open_dataset
    from singleshot.data.coverage import format_coverage, prior_coverage
    from singleshot.presets import get_preset

    command = [sys.executable, "-m", "singleshot.cli", "data", "coverage", str(coco), "--split", "train",
               "--model", "ssdlite320_voc"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dataset = open_dataset(coco, split="train", progress=None)
    lite = prior_coverage(dataset, get_preset("ssdlite320_voc").prior_config, progress=None)
    assert lite.image_size == 320 and lite.num_levels == 6 and len(lite.best_iou) > 0
    assert done.stdout.strip() == format_coverage(lite, f"ssdlite320_voc on {coco} (train)")
    ssd = prior_coverage(dataset, get_preset("ssd300_voc").prior_config, progress=None)
    assert not torch.equal(torch.as_tensor(ssd.best_iou), torch.as_tensor(lite.best_iou))  # the boxes differ
