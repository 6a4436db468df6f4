"""``--images DIR --annotations FILE``: a COCO dataset given by its files, in train and eval."""

import json

import pytest
import torch

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import build_parser, main
from singleshot.cli.train import build_config
from singleshot.data.synthetic import SYNTH_CLASSES, write_dataset


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("coco"), "coco", num_train=4, num_test=3, size=64, seed=1)
    return {
        split: (root / "images" / split, root / "annotations" / f"instances_{split}.json")
        for split in ("train", "test")
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = singleshot.build_model(
        "ssd160_compact", num_classes=7, class_names=["__background__", *SYNTH_CLASSES]
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model)
    return path


def files(prefix, pair):
    return [f"--{prefix}images", str(pair[0]), f"--{prefix}annotations", str(pair[1])]


def test_eval_images_and_annotations_equal_the_folder_form(coco, checkpoint, tmp_path):
    common = ["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--no-progress"]
    assert main([*common, *files("", coco["test"]), "--out", str(tmp_path / "a")]) == 0
    root = coco["test"][0].parent.parent
    assert main([*common, "--data", str(root), "--split", "test", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "ab")
    assert a["data"] == str(coco["test"][1]) and a["split"] is None
    assert a["map"] == b["map"] and a["ap"] == b["ap"]


def test_eval_needs_a_dataset_and_both_files(coco, checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 1
    assert "give --data PATH, or --images DIR --annotations FILE" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--images", str(coco["test"][0])]) == 1
    assert "--images and --annotations go together" in capsys.readouterr().err


def test_train_a_few_iterations_from_images_and_annotations(coco, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "ssd160_compact", "--out", str(run), "--batch-size", "2", "--iterations", "2",
            "--workers", "0", "--device", "cpu", "--log-every", "1", "--no-progress",
            *files("", coco["train"]), *files("val-", coco["test"])]  # fmt: skip
    assert main(argv) == 0
    assert "best checkpoint" in capsys.readouterr().out
    model = singleshot.load(run / "last.pt")
    assert model.class_names == ["__background__", *SYNTH_CLASSES]
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in evals if r["kind"] == "eval"] == [2]


def test_train_flags_set_the_config():
    parse = build_parser().parse_args
    config, _ = build_config(parse(["train", "--images", "im", "--annotations", "a.json"]))
    assert (config.images, config.annotations, config.data) == ("im", "a.json", None)
    with pytest.raises(ValueError, match="images and annotations go together"):
        build_config(parse(["train", "--images", "im"]))
    with pytest.raises(ValueError, match="not both"):
        build_config(parse(["train", "--images", "im", "--annotations", "a.json", "--data", "d"]))
