"""``singleshot detect`` on folders and globs, and the drawing helpers it uses."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from ci import under_ci
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.imageio import read_image
from singleshot.inference import preprocess
from singleshot.layout import list_decisions
from singleshot.visualize import class_color, draw_detections, save_image
from tolerances import WINOGRAD_GAIN, network

# detections.json rounds boxes to 3 decimals and scores to 5
BOX_DECIMALS, SCORE_DECIMALS = 0.5e-3, 0.5e-5

NAMES = ["__background__", "cat", "dog", "bird"]
CATEGORY_IDS = [0, 17, 18, 40]  # as if trained on a custom COCO set with these category ids


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", class_names=NAMES).eval()
    with torch.no_grad():  # spread-out scores: a few confident detections per image
        for conv in model.head.conf:
            conv.weight.mul_(0.2)
            conv.bias.view(-1, 4)[:, 0] += 4.0
        for conv in model.head.loc:
            conv.weight.mul_(0.05)
    model.category_ids = CATEGORY_IDS
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model)


def detection_tolerances(model, paths, gain=1):
    """Box (pixels) and score bounds for the same network run in other batches or kernels.

    `tolerances.network` at the outputs' scale (times ``gain``); softmax moves by <= 1/2
    the logits' change; a loc change moves a box by <= 0.2 of its prior's size (< 1) times
    the image's side (<= 90 px here).
    """
    with torch.no_grad():
        loc, conf = model(preprocess([read_image(p) for p in paths], model.image_size, model.image_mean))
    box = 0.2 * 90 * gain * network(model, loc.abs().max().item())
    return box, gain * network(model, conf.abs().max().item())


def write_images(folder, names, seed=0):
    g = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        array = g.integers(0, 256, (60 + 10 * i, 90 - 5 * i, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name)


def test_detect_folder_with_a_corrupt_image(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, ["a.png", "b.jpg", "c.png"])
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (images / "notes.txt").write_text("not an image, not picked up from a folder")
    out = tmp_path / "out"
    threshold = 0.3
    code = main(["detect", "--checkpoint", str(checkpoint), str(images), "--out", str(out),
                 "--threshold", str(threshold), "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "skipped 1" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "c.png", "detections.json"]

    model = singleshot.load(checkpoint)
    results = json.loads((out / "detections.json").read_text())
    # the CLI ran batches of 2, predict one image: kernels may sum in other orders
    box_tol, score_tol = detection_tolerances(model, [images / n for n in ["a.png", "b.jpg", "c.png"]])
    total = 0
    for name in ["a.png", "b.jpg", "c.png"]:
        expected = model.predict(images / name, score_threshold=threshold)[0]
        got = [r for r in results if r["image_id"] == name]
        assert len(got) == len(expected["scores"])
        total += len(got)
        for r, box, score, label in zip(got, expected["boxes"], expected["scores"], expected["labels"]):
            x1, y1, x2, y2 = box.tolist()
            # a width x2 - x1 takes both corners' errors
            assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=BOX_DECIMALS + 2 * box_tol)
            assert r["score"] == pytest.approx(float(score), abs=SCORE_DECIMALS + score_tol)
            assert r["score"] > threshold
            assert r["category_id"] == CATEGORY_IDS[int(label)]  # the training set's own id
        drawn = read_image(out / name)
        original = read_image(images / name)
        assert drawn.shape == original.shape
        if name.endswith(".png") and got:  # lossless: the boxes changed pixels
            assert not torch.equal(drawn, original)
    assert total > 0
    assert f"3 images, {total} detections" in captured.out


def test_detect_glob_numeric_ids_no_draw(checkpoint, tmp_path):
    images = tmp_path / "coco"
    write_images(images, ["000000000139.png", "000000000285.png"], seed=1)
    out = tmp_path / "out"
    code = main(["detect", "--checkpoint", str(checkpoint), str(images / "*.png"), "--out", str(out),
                 "--threshold", "0.2", "--no-draw"])  # fmt: skip
    assert code == 0
    assert [p.name for p in out.iterdir()] == ["detections.json"]
    ids = {r["image_id"] for r in json.loads((out / "detections.json").read_text())}
    assert ids == {139, 285}  # both images give detections, named by their numeric ids


def test_detect_errors(checkpoint, tmp_path, capsys):
    assert (
        main(["detect", "--checkpoint", str(checkpoint), str(tmp_path / "missing"), "--out", str(tmp_path)])
        == 1
    )
    assert "missing: no such file or folder" in capsys.readouterr().err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    assert main(["detect", "--checkpoint", str(checkpoint), str(only_bad), "--out", str(tmp_path / "o")]) == 1
    assert "x.png" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(checkpoint), str(only_bad), "--half"]) == 1
    assert "--half needs --device cuda" in capsys.readouterr().err


def test_draw_detections_draws_only_confident_boxes():
    image = torch.full((3, 40, 60), 30, dtype=torch.uint8)
    detection = {
        "boxes": torch.tensor([[10.0, 5.0, 50.0, 30.0], [0.0, 0.0, 8.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 1]),
    }
    drawn = draw_detections(image, detection, NAMES, score_threshold=0.5, width=1)
    assert drawn.dtype == torch.uint8 and drawn.shape == image.shape
    assert (image == 30).all()  # input untouched
    color = torch.tensor(class_color(2), dtype=torch.uint8)
    assert torch.equal(
        drawn[:, 30, 30], color
    )  # bottom edge (PIL boxes include x2, y2; the caption is at the top)
    assert torch.equal(drawn[:, 20, 50], color)  # right edge
    assert (drawn[:, 37, 5] == 30).all() and (drawn[:, 20, 30] == 30).all()  # outside and inside: untouched
    assert (drawn[:, 4, 4] == 30).all()  # the 0.2 detection is not drawn
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    assert torch.equal(draw_detections(image, empty, NAMES), image)
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(image.float(), detection, NAMES)


def test_save_image_round_trip(tmp_path):
    image = torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = save_image(image, tmp_path / "deep" / "x.png")
    assert torch.equal(read_image(path), image)
    assert class_color(1) != class_color(2) and class_color(5) == class_color(5)


def test_detect_winograd_choices(checkpoint, tmp_path, capsys, monkeypatch):
    from singleshot.winograd import build as kernel_build

    images = tmp_path / "images"
    write_images(images, ["a.png", "b.png"])

    def detections(*flags):
        out = tmp_path / ("out" + "".join(flags))
        code = main(["detect", "--checkpoint", str(checkpoint), str(images), "--out", str(out),
                     "--threshold", "0.3", "--no-draw", "--no-progress", *flags])  # fmt: skip
        assert code == 0
        return json.loads((out / "detections.json").read_text())

    direct = detections("--no-winograd")
    if kernel_build.find_compiler() is None and under_ci():  # a skip under CI would hide untested code
        pytest.fail("no C compiler under CI: --winograd detection is untested", pytrace=False)
    if kernel_build.find_compiler() is not None:
        fast = detections("--winograd")  # the compact model's 192-channel conv runs by Winograd
        assert [r["category_id"] for r in fast] == [r["category_id"] for r in direct]
        model = singleshot.load(checkpoint)
        box_tol, score_tol = detection_tolerances(model, [images / "a.png", images / "b.png"], WINOGRAD_GAIN)
        for a, b in zip(fast, direct):  # both rounded in the file
            assert a["score"] == pytest.approx(b["score"], abs=2 * SCORE_DECIMALS + score_tol)
            assert a["bbox"] == pytest.approx(b["bbox"], abs=2 * BOX_DECIMALS + 2 * box_tol)
    capsys.readouterr()

    # no compiler: the default falls back with a note, --winograd is an error
    monkeypatch.setattr(kernel_build, "_loaded", None)
    decisions = list_decisions()  # this machine's memory-format decisions go along: direct's layout
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    for path in decisions:
        shutil.copy(path, tmp_path / "cache")
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert detections() == direct
    assert "note: direct convolutions" in capsys.readouterr().err
    code = main(
        ["detect", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "x"), "--winograd"]
    )
    assert code == 1
    assert "--winograd: Winograd convolutions need a C compiler" in capsys.readouterr().err


def detect_category_ids(checkpoint, images, out, *extra):
    code = main(["detect", "--checkpoint", str(checkpoint), str(images), "--out", str(out), "--threshold",
                 "0.2", "--no-draw", "--no-progress", *extra])  # fmt: skip
    assert code == 0
    results = json.loads((out / "detections.json").read_text())
    assert results
    return results


def test_detect_writes_the_category_ids_of_a_coco_file_by_name(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, ["1.png", "2.png"], seed=3)
    trained = detect_category_ids(checkpoint, images, tmp_path / "plain")
    assert {r["category_id"] for r in trained} <= {17, 18, 40}
    # Another COCO set naming the classes in another order, with its own ids: these win.
    categories = [{"id": 8, "name": "dog"}, {"id": 7, "name": "cat"}, {"id": 5, "name": "bird"}]
    annotations = tmp_path / "instances_val.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    got = detect_category_ids(checkpoint, images, tmp_path / "custom", "--categories", str(annotations))
    ids = {"cat": 7, "dog": 8, "bird": 5}
    assert len(got) == len(trained)
    assert [r["category_id"] for r in got] == [
        ids[NAMES[CATEGORY_IDS.index(r["category_id"])]] for r in trained
    ]
    assert len({r["category_id"] for r in got}) > 1

    categories[2]["name"] = "horse"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    code = main(["detect", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "x"),
                 "--categories", str(annotations)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert (
        "in the dataset but not the model: horse" in err and "in the model but not the dataset: bird" in err
    )


def test_detect_with_coco_classes_writes_coco_ids(tmp_path):
    from singleshot.weights.names import coco_names_81, coco_names_91

    # the 80 COCO classes in another order (names as a labelling tool may list them)
    names = ["__background__", *reversed(coco_names_81()[1:])]
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", class_names=names).eval()
    with torch.no_grad():
        for conv in model.head.conf:  # a few confident classes: labels 1, 5, 40, 80
            conv.weight.mul_(0.1)
            conv.bias.view(-1, 81)[:, [1, 5, 40, 80]] += 6.0
    checkpoint = save_checkpoint(tmp_path / "coco.pt", model)
    images = tmp_path / "images"
    write_images(images, ["5.png"], seed=4)
    got = detect_category_ids(checkpoint, images, tmp_path / "out")
    expected = model.predict(images / "5.png", score_threshold=0.2)[0]["labels"].tolist()
    coco = coco_names_91()  # index = COCO category id
    assert sorted(coco[r["category_id"]] for r in got) == sorted(names[label] for label in expected)
    # COCO's ids of toothbrush, vase, wine glass, person (labels 1, 5, 40, 80 here)
    assert [names[label] for label in (1, 5, 40, 80)] == ["toothbrush", "vase", "wine glass", "person"]
    found = {r["category_id"] for r in got}
    assert found <= {90, 86, 46, 1} and len(found) >= 3
