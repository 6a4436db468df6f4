import argparse
from collections import Counter

import numpy as np
import torch
from PIL import Image

from singleshot.cli import build_parser, main
from singleshot.data import open_dataset
from singleshot.data.coverage import best_prior_iou, prior_coverage
from singleshot.data.show import class_colour
from singleshot.data.stats import dataset_stats, text_histogram
from singleshot.presets import get_preset
from tolerances import rounding


def voc_folder(root, width, height, objects, classes=("thing", "blob")):
    """One-image VOC folder; objects: list of (class name, xmin, ymin, xmax, ymax) 1-based inclusive."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (128, 128, 128)).save(root / "JPEGImages" / "im.png")
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, a, b, c, d in objects
    )
    (root / "Annotations" / "im.xml").write_text(
        f"<annotation><filename>im.png</filename><size><width>{width}</width><height>{height}</height></size>"
        f"{body}</annotation>"
    )
    (root / "ImageSets" / "Main" / "train.txt").write_text("im\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_synth_then_check_counts_match_the_label_files(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--format", "yolo", "--num-train", "6", "--num-test", "2",
                 "--size", "64", "--seed", "3"]) == 0  # fmt: skip
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 6
    counts = Counter()
    for label_file in (out / "labels" / "train").glob("*.txt"):
        counts.update(int(line.split()[0]) for line in label_file.read_text().splitlines() if line.strip())
    capsys.readouterr()
    assert main(["data", "check", str(out), "--split", "train"]) == 0
    report = capsys.readouterr().out
    classes = (out / "classes.txt").read_text().split()
    for index, name in enumerate(classes):
        row = next(line for line in report.splitlines() if line.split()[:2] == [str(index + 1), name])
        assert int(row.split()[2]) == counts[index]
    assert "invalid: none" in report and report.rstrip().endswith("OK: 0 invalid item(s)")


def test_check_reports_invalid_files_and_fails(tmp_path, capsys):
    out = tmp_path / "synth"
    main(
        ["data", "synth", str(out), "--format", "voc", "--num-train", "3", "--num-test", "1", "--size", "48"]
    )
    broken = out / "JPEGImages" / "train_000001.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"{broken}: not a readable image" in report
    assert "== test:" in report and "== train:" in report  # every split is checked by default
    assert report.rstrip().endswith("INVALID: 1 invalid item(s)")


def test_check_unreadable_split_fails(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{oops")
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "malformed JSON" in capsys.readouterr().out


def test_show_draws_the_box_in_its_class_colour(tmp_path):
    root = voc_folder(tmp_path / "v", 64, 64, [("blob", 11, 21, 40, 50)])  # continuous (10, 20, 40, 50)
    grid = tmp_path / "grid.png"
    assert main(["data", "show", str(root), "--out", str(grid), "--num", "1", "--cell", "64"]) == 0
    picture = np.asarray(Image.open(grid))
    assert picture.shape == (64, 64, 3)
    colour = class_colour(2)
    assert tuple(picture[35, 10]) == colour and tuple(picture[35, 39]) == colour  # left and right edges
    assert tuple(picture[35, 25]) == (128, 128, 128)  # inside untouched
    assert tuple(picture[5, 5]) == (128, 128, 128)


def test_show_augmented_grid(tmp_path):
    out = tmp_path / "synth"
    main(
        ["data", "synth", str(out), "--format", "coco", "--num-train", "4", "--num-test", "0", "--size", "48"]
    )
    grid = tmp_path / "aug.png"
    args = ["data", "show", str(out), "--out", str(grid), "--augment", "--model", "ssd160_compact"]
    assert main([*args, "--num", "3", "--columns", "3", "--cell", "50", "--seed", "1"]) == 0
    first = np.asarray(Image.open(grid))
    assert first.shape == (50, 150, 3)
    assert main([*args, "--num", "3", "--columns", "3", "--cell", "50", "--seed", "1"]) == 0
    assert np.array_equal(first, np.asarray(Image.open(grid)))  # seeded


def test_coverage_hand_computed(tmp_path, capsys):
    # ssd300_voc level 0, cell (row 5, col 5): centre 44 px, 30 x 30 -> continuous (29, 29, 59, 59);
    # a 3 x 3 box's best IoU is 9 / 900 (any 30 x 30 default box around it; no smaller ones exist)
    root = voc_folder(tmp_path / "v", 300, 300, [("thing", 30, 30, 59, 59), ("thing", 201, 201, 203, 203)])
    ds = open_dataset(root)
    config = get_preset("ssd300_voc").prior_config
    boxes = torch.tensor([[29, 29, 59, 59], [200, 200, 203, 203]], dtype=torch.float32) / 300
    best, index, matches = best_prior_iou(boxes, config)
    assert best[0] > 0.999 and index[0] == (5 * 38 + 5) * 4 and matches[0] >= 1
    # IoU 0.01 to a relative error of: its 3 px intersection sides (0.01) are differences of
    # coordinates <= 0.7, each rounded twice (box / 300; the prior's centre +- size / 2), so
    # 2 EPS * 0.7 / 0.01 per side; two sides and the union (10x less sensitive): 6 such
    assert abs(float(best[1]) - 0.01) <= 0.01 * rounding(0.7 / 0.01, ops=6) and matches[1] == 0
    coverage = prior_coverage(ds, config)
    assert coverage.covered == 0.5 and coverage.best_level.tolist() == [0, 0]
    assert main(["data", "coverage", str(root), "--model", "ssd300_voc"]) == 0
    assert "best default box IoU >= 0.5: 1 of 2 (50.0%)" in capsys.readouterr().out


def test_coverage_normalises_x_by_width_and_y_by_height(tmp_path):
    # the same box stretched onto a 600 x 300 image is the same fraction of the input
    root = voc_folder(tmp_path / "v", 600, 300, [("thing", 59, 30, 118, 59)])  # continuous (58, 29, 118, 59)
    coverage = prior_coverage(open_dataset(root), get_preset("ssd300_voc").prior_config)
    assert coverage.best_iou[0] > 0.999


def test_dataset_stats_and_histogram(tmp_path):
    root = voc_folder(tmp_path / "v", 100, 50, [("thing", 1, 1, 10, 40), ("blob", 1, 1, 50, 25)])
    stats = dataset_stats(open_dataset(root))
    assert stats.objects.tolist() == [0, 1, 1] and stats.num_images == 1 and stats.empty_images == 0
    # float64, the same divisions and square roots as here: exact
    assert stats.aspects.tolist() == [10 / 40, 50 / 25]
    assert stats.relative_sizes.tolist() == [np.sqrt(400 / 5000), np.sqrt(1250 / 5000)]
    lines = text_histogram(np.array([0.5, 1.0, 1.0, 3.0]), (0, 1, 2, np.inf), width=10)
    # 0.5 in [0, 1); 1.0 (on an edge) in [1, 2) twice; 3.0 in [2, inf)
    assert [line.split()[:4] for line in lines] == [
        ["[0,", "1)", "1", "25.0%"],
        ["[1,", "2)", "2", "50.0%"],
        ["[2,", "inf)", "1", "25.0%"],
    ]
    assert lines[1].endswith(" " + "#" * 10) and lines[0].endswith(" " + "#" * 5)


def test_data_without_action_and_help_on_every_option(capsys):
    assert main(["data"]) == 2
    parser = build_parser()
    data = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    actions = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(actions) == {"synth", "check", "show", "coverage"}
    for name, sub in actions.items():
        for action in sub._actions:
            assert action.help, f"data {name}: option {action.dest} has no help"


def test_synth_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("mine")
    assert main(["data", "synth", str(tmp_path), "--num-train", "1", "--num-test", "0"]) == 1
    assert "folder is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
