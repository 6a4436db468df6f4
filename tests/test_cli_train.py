"""``singleshot train``: a real run on a small synthetic VOC set, resume, flags, errors, help."""

import argparse
import json

import pytest
import torch

import singleshot
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.cli import build_parser, main
from singleshot.cli.train import build_config
from singleshot.data.synthetic import SYNTH_CLASSES, write_dataset


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("voc"), "voc", num_train=8, num_test=4, size=64, seed=0)


def base_args(data, out, *extra):
    return [
        "train", "--model", "ssd160_compact", "--data", str(data), "--out", str(out), "--batch-size", "4",
        "--train-split", "train", "--workers", "0", "--device", "cpu", "--log-every", "1", "--no-progress",
        *extra,
    ]  # fmt: skip


def log_records(run, kind):
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_then_resume_from_the_command_line(voc, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(base_args(voc, run, "--iterations", "2", "--val-split", "none", "--set", "optimizer.lr=0.01"))
    assert code == 0
    assert "last checkpoint" in capsys.readouterr().out
    model = singleshot.load(run / "last.pt")
    assert model.class_names == ["__background__", *SYNTH_CLASSES]
    state = load_checkpoint(run / "last.pt")["training"]
    assert state["iteration"] == 2 and state["config"]["optimizer"]["lr"] == 0.01

    resume = ["train", "--out", str(run), "--resume", "--iterations", "4", "--lr", "0.005", "--no-progress"]
    assert main(resume) == 0
    state = load_checkpoint(run / "last.pt")["training"]
    assert state["iteration"] == 4 and state["config"]["batch_size"] == 4  # the saved config ...
    assert state["config"]["optimizer"]["lr"] == 0.005  # ... with what this command changed
    assert {g["initial_lr"] for g in state["optimizer"]["param_groups"]} == {0.005}
    assert [r["iteration"] for r in log_records(run, "train")] == [1, 2, 3, 4]


def test_train_evaluates_and_keeps_the_best_checkpoint(voc, tmp_path):
    run = tmp_path / "run"
    assert main(base_args(voc, run, "--iterations", "2", "--eval-every", "1")) == 0
    evals = log_records(run, "eval")
    assert [r["iteration"] for r in evals] == [1, 2]
    assert all(0.0 <= r["map"] <= 1.0 and r["metric"] == "voc07" for r in evals)
    best = load_checkpoint(run / "best.pt")["training"]
    assert best["best_map"] == max(r["map"] for r in evals)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "optimizer.nope=1"], "unknown key"),
        (["--set", "iterations=many"], "iterations"),
        (["--config", "no_such_recipe"], "no such recipe"),
        (["--resume"], "no such checkpoint"),
    ],
)
def test_bad_input_is_reported_without_a_traceback(voc, tmp_path, capsys, extra, message):
    assert main(base_args(voc, tmp_path / "run", "--iterations", "1", *extra)) == 1
    assert message in capsys.readouterr().err


def test_missing_dataset_is_named(tmp_path, capsys):
    assert main(base_args(tmp_path / "nowhere", tmp_path / "run", "--iterations", "1")) == 1
    assert "nowhere" in capsys.readouterr().err


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def test_flags_override_the_recipe_and_set_overrides_the_flags():
    config, resume = build_config(parse("--config", "ssd300_voc0712", "--lr", "0.01", "--iterations", "10"))
    assert resume is None and config.model == "ssd300_voc"
    assert config.optimizer.lr == 0.01 and config.iterations == 10 and config.batch_size == 32
    config, _ = build_config(
        parse("--config", "ssd300_voc0712", "--lr", "0.01", "--set", "optimizer.lr=0.02")
    )
    assert config.optimizer.lr == 0.02
    config, _ = build_config(parse("--paper-bias", "--data", "VOC2007", "VOC2012", "--val-split", "none"))
    assert (config.optimizer.bias_lr_factor, config.optimizer.bias_weight_decay) == (2.0, 0.0)
    assert config.data == ["VOC2007", "VOC2012"] and config.val_split is None


def test_no_command_prints_the_commands(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    assert text.startswith("usage: singleshot") and all(name in text for name in ("train", "eval", "export"))


def test_help_explains_every_option(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "demo"):
        for action in subparsers.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for action in subparsers.choices[name]._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.option_strings[-1] in text


def model_made_val(coco, checkpoint, target, order):
    """A COCO folder over ``coco``'s test images whose ground truth is the checkpoint's two best
    detections of each class per image; categories listed in ``order`` with ids 11, 12, ...
    (labels follow the ids, so the order of ``order`` is the labels' order)."""
    model = singleshot.load(checkpoint)
    source = json.loads((coco / "annotations" / "instances_test.json").read_text())
    ids = {name: 11 + k for k, name in enumerate(order)}
    annotations = []
    for image in source["images"]:
        det = model.predict(coco / "images" / "test" / image["file_name"])[0]
        sides = det["boxes"][:, 2:] - det["boxes"][:, :2]
        labels = det["labels"].masked_fill((sides < 2).any(1), 0)  # no slivers cut by the image border
        for label, name in enumerate(model.class_names[1:], start=1):
            for x1, y1, x2, y2 in det["boxes"][labels == label][:2].tolist():
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "iscrowd": 0,
                                    "category_id": ids[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1)})  # fmt: skip
    categories = [{"id": ids[name], "name": name} for name in order]
    (target / "annotations").mkdir(parents=True)
    (target / "images").mkdir()
    (target / "images" / "test").symlink_to(coco / "images" / "test")
    data = {"images": source["images"], "annotations": annotations, "categories": categories}
    (target / "annotations" / "instances_test.json").write_text(json.dumps(data))
    return target


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("coco"), "coco", num_train=8, num_test=6, size=64, seed=1)


def test_train_and_val_files_with_categories_in_another_order(coco, tmp_path, capsys):
    torch.manual_seed(0)
    names = ["__background__", *SYNTH_CLASSES]
    start = singleshot.build_model("ssd160_compact", class_names=names)
    with torch.no_grad():  # confident, with other scores per class
        for conv in start.head.conf:
            conv.bias.view(-1, len(names))[:, 1:] += torch.linspace(1.0, 3.0, len(names) - 1)
    init = save_checkpoint(tmp_path / "init.pt", start)
    # The val file lists the categories in reverse order (bar = label 1 ... circle = label 6).
    val = model_made_val(coco, init, tmp_path / "val", list(reversed(SYNTH_CLASSES)))
    same_order = model_made_val(coco, init, tmp_path / "val_same", list(SYNTH_CLASSES))
    run = tmp_path / "run"
    args = base_args(coco, run, "--iterations", "1", "--val-data", str(val), "--val-split", "test",
                     "--init-from", str(init), "--lr", "1e-6", "--freeze-bn")  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "classes matched by name" in line]) == 1
    logged = log_records(run, "eval")[-1]
    logged_ap = {list(reversed(SYNTH_CLASSES))[int(label) - 1]: ap for label, ap in logged["ap"].items()}

    # The same checkpoint evaluated by `singleshot eval` on the val split in the training order.
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(same_order), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert logged["map"] == metrics["map"] and metrics["map"] > 0.3
    assert logged_ap == metrics["ap"]
    assert len(set(metrics["ap"].values())) > 2  # per-class APs differ: a label mix-up would show

    # detect writes the training file's own category ids (1..6 in write_dataset's file)
    images = coco / "images" / "test"
    assert main(["detect", "--checkpoint", str(run / "last.pt"), str(images), "--out", str(tmp_path / "det"),
                 "--threshold", "0.05", "--no-draw", "--no-progress"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(range(1, 7))
