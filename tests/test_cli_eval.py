import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.data import open_dataset
from singleshot.evaluation import evaluate_model

CLASSES = ["__background__", "cat", "dog"]
# (image id, (H, W), [(class, xmin, ymin, xmax, ymax, difficult)]) in VOC's 1-based inclusive pixels
IMAGES = [
    ("000001", (48, 64), [("cat", 5, 6, 40, 30, 0), ("dog", 30, 10, 60, 45, 0)]),
    ("000002", (60, 40), [("dog", 1, 1, 20, 30, 1), ("cat", 10, 20, 38, 58, 0)]),
    ("000003", (50, 50), [("dog", 12, 8, 44, 40, 0)]),
]


def write_voc(root):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    rng = np.random.default_rng(0)
    for image_id, (h, w), objects in IMAGES:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        xml = [f"<annotation><filename>{image_id}.jpg</filename>"
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]  # fmt: skip
        for name, x1, y1, x2, y2, difficult in objects:
            xml.append(
                f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            )
        xml.append("</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text("".join(xml))
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i, _, _ in IMAGES))
    return root


def write_coco(root):
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for k, (_, (h, w), objects) in enumerate(IMAGES):
        image_id = 100 + k
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / "val" / f"{k}.png"
        )
        images.append({"id": image_id, "file_name": f"{k}.png", "height": h, "width": w})
        for name, x1, y1, x2, y2, crowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 17 if name == "cat" else 18, "iscrowd": crowd,
                                "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1],
                                "area": float((x2 - x1 + 1) * (y2 - y1 + 1))})  # fmt: skip
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", num_classes=3, class_names=CLASSES)
    # Make the untrained model confident somewhere, so that there is something to score.
    with torch.no_grad():
        for conv in model.head.conf:
            conv.bias.view(-1, 3)[:, 1:] += 2.0
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model)
    return path


def test_eval_voc_dataset_writes_table_metrics_and_plot(tmp_path, checkpoint, capsys):
    data = write_voc(tmp_path / "VOCsmall")
    out = tmp_path / "out"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--metric", "voc12",
                 "--out", str(out), "--batch-size", "2", "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())

    # The same evaluation through the library.
    from singleshot.data import open_dataset

    model = singleshot.load(checkpoint)
    expected = evaluate_model(model, open_dataset(data, split="test"), "voc12", batch_size=3, progress=False)
    assert metrics["metric"] == "voc12" and metrics["split"] == "test" and metrics["num_images"] == 3
    assert metrics["num_ground_truth"] == {"cat": 2, "dog": 2}  # the difficult dog is not counted
    assert set(metrics["ap"]) == {"cat", "dog"}
    for label, name in ((1, "cat"), (2, "dog")):
        # an AP depends only on the detections' order and matches, which the rounding of other
        # batches (2 and 3) could change only at near-ties; then the same float64 arithmetic,
        # and JSON reads float64 back exactly
        assert metrics["ap"][name] == expected["ap"][label]
    assert metrics["map"] == expected["map"]
    assert "curves" not in metrics
    assert f"{100 * metrics['map']:.2f}" in printed and "cat" in printed and "dog" in printed
    with Image.open(out / "pr_curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_eval_coco_dataset_with_coco_metric(tmp_path):
    # A checkpointed compact model with constant outputs (zero head weights): everywhere background
    # but at the last level's single cell, whose first box says cat and second box dog. Each
    # image thus gets exactly two detections: the centred squares of 132 and sqrt(132 x 164) px.
    model = singleshot.build_model("ssd160_compact", num_classes=3, class_names=CLASSES)
    with torch.no_grad():
        for conv in [*model.head.loc, *model.head.conf]:
            conv.weight.zero_()
            conv.bias.zero_()
        for conv in model.head.conf:
            conv.bias.view(-1, 3)[:, 0] = 8.0
        model.head.conf[-1].bias.view(-1, 3)[:2] = torch.tensor([[0.0, 8.0, 0.0], [0.0, 0.0, 8.0]])
    checkpoint = save_checkpoint(tmp_path / "fixed.pt", model)
    cat_box, dog_box = model.priors[-4].double(), model.priors[-3].double()  # (cx, cy, w, h) fractions
    assert cat_box.tolist() == pytest.approx([0.5, 0.5, 132 / 160, 132 / 160])

    # Ground truth: the cat box in every image (IoU 1); the dog box in image 0, none in image 1,
    # and in image 2 a centred box of 0.72 of its area (IoU 0.72).
    def bbox(box, width, height, shrink=1.0):
        w, h = box[2] * width * shrink, box[3] * height * shrink
        return [float(box[0] * width - w / 2), float(box[1] * height - h / 2), float(w), float(h)]

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    images, annotations = [], []
    for k, (_, (h, w), _) in enumerate(IMAGES):
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(root / "images" / "val" / f"{k}.png")
        images.append({"id": 100 + k, "file_name": f"{k}.png", "height": h, "width": w})
        boxes = [(17, bbox(cat_box, w, h))]
        if k != 1:
            boxes.append((18, bbox(dog_box, w, h, 1.0 if k == 0 else 0.72**0.5)))
        for category, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + k, "category_id": category,
                                "iscrowd": 0, "bbox": box, "area": box[2] * box[3]})  # fmt: skip
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))

    out = tmp_path / "out"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "val",
                 "--metric", "coco", "--out", str(out), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "coco"
    assert len(metrics["stats"]) == 12
    assert {row["category_id"] for row in metrics["per_class"].values()} == {17, 18}
    # cat: IoU 1 everywhere, AP 1 at every threshold. dog: equal scores, images in id order:
    # IoU >= 0.5 up to 0.70: TP FP TP -> precision 1 up to recall 1/2, then 2/3: 101 recall points,
    # 51 at 1 and 50 at 2/3 = 253/303; from 0.75: TP FP FP -> 51 points at 1 = 153/303.
    dog_ap50, dog_ap = 253 / 303, (5 * 253 / 303 + 5 * 153 / 303) / 10
    assert metrics["per_class"]["cat"]["AP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["per_class"]["dog"]["AP"] == pytest.approx(dog_ap, abs=1e-9)
    assert metrics["per_class"]["dog"]["AP50"] == pytest.approx(dog_ap50, abs=1e-9)
    assert metrics["per_class"]["dog"]["AP75"] == pytest.approx(153 / 303, abs=1e-9)
    assert metrics["AP"] == pytest.approx((1 + dog_ap) / 2, abs=1e-9)
    assert metrics["AP50"] == pytest.approx((1 + dog_ap50) / 2, abs=1e-9)
    assert metrics["AP75"] == pytest.approx((1 + 153 / 303) / 2, abs=1e-9)


def test_eval_reports_bad_inputs(tmp_path, checkpoint, capsys):
    data = write_voc(tmp_path / "VOCsmall")
    (data / "classes.txt").write_text("cat\ndog\nbird\n")
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "in the dataset but not the model: bird; in the model but not the dataset: none" in (
        capsys.readouterr().err
    )
    code = main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)])
    assert code == 1
    assert "missing.pt" in capsys.readouterr().err
    base = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--device", "tpu:x"], "--device tpu:x: "),
    ]:
        assert main(base + extra) == 1
        assert f"singleshot eval: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def model_made_coco(root, checkpoint, categories, rename=None):
    """A COCO set whose ground truth is the checkpoint's own two best detections of each class
    per image (AP well above 0, below 1: scores interleave across images); ``categories``
    [{"id", "name"}] in file order, ``rename`` {model class: its name in the file}."""
    model = singleshot.load(checkpoint)
    rng = np.random.default_rng(2)
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for k, (h, w) in enumerate([(64, 80), (70, 50), (60, 60), (90, 72)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images/val" / f"{k}.png"
        )
        images.append({"id": 500 + k, "file_name": f"{k}.png", "height": h, "width": w})
        det = model.predict(root / "images/val" / f"{k}.png", score_threshold=0.01)[0]
        for label, name in ((1, "cat"), (2, "dog")):
            for x1, y1, x2, y2 in det["boxes"][det["labels"] == label][0:2].tolist():
                category = ids[(rename or {}).get(name, name)]
                annotations.append({"id": len(annotations) + 1, "image_id": 500 + k, "iscrowd": 0,
                                    "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1)})  # fmt: skip
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def eval_metrics(checkpoint, data, out, metric, *extra):
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "val", "--metric",
                 metric, "--out", str(out), "--workers", "0", "--no-progress", *extra])  # fmt: skip
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("metric", ["voc07", "coco"])
def test_categories_in_another_order_and_with_other_ids_give_the_same_ap(
    tmp_path, checkpoint, capsys, metric
):
    same = model_made_coco(tmp_path / "a", checkpoint, [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}])
    # As a labelling tool re-exports it: dog first, other ids; labels (by id order) now dog = 1, cat = 2.
    other = model_made_coco(tmp_path / "b", checkpoint, [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}])
    expected = eval_metrics(checkpoint, same, tmp_path / "out_a", metric)
    assert "note:" not in capsys.readouterr().err
    got = eval_metrics(checkpoint, other, tmp_path / "out_b", metric)
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "classes matched by name" in line]) == 1
    assert got["map"] == expected["map"] and got["ap"] == expected["ap"]
    assert expected["map"] > 0.4 and expected["ap"]["cat"] != expected["ap"]["dog"]  # a swap would show
    if metric == "coco":
        assert {n: r["category_id"] for n, r in expected["per_class"].items()} == {"cat": 17, "dog": 18}
        assert {n: r["category_id"] for n, r in got["per_class"].items()} == {"cat": 7, "dog": 3}
        assert got["stats"] == expected["stats"]
    else:  # independently: the model's detections against the ground truth written, by name
        from singleshot.data import open_dataset
        from singleshot.evaluation import evaluate_voc

        model, dataset = singleshot.load(checkpoint), open_dataset(same, split="val")
        detections = [model.predict(dataset.image_path(i))[0] for i in range(len(dataset))]
        targets = [dataset.annotation(i) for i in range(len(dataset))]
        result = evaluate_voc(detections, targets, use_07_metric=True, inclusive_boxes=False)
        assert got["ap"] == pytest.approx({"cat": result["ap"][1], "dog": result["ap"][2]}, abs=1e-9)


def test_other_class_names_are_an_error_unless_mapped(tmp_path, checkpoint, capsys):
    same = model_made_coco(tmp_path / "a", checkpoint, [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    renamed = model_made_coco(
        tmp_path / "b",
        checkpoint,
        [{"id": 4, "name": "puppy"}, {"id": 9, "name": "kitty"}],
        {"cat": "kitty", "dog": "puppy"},
    )
    out = tmp_path / "out"
    code = main(
        ["eval", "--checkpoint", str(checkpoint), "--data", str(renamed), "--split", "val", "--out", str(out)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "in the dataset but not the model: puppy, kitty" in err
    assert "in the model but not the dataset: cat, dog" in err
    assert not (out / "metrics.json").exists()

    (tmp_path / "map.yaml").write_text("kitty: cat\npuppy: dog\n")
    expected = eval_metrics(checkpoint, same, tmp_path / "out_a", "coco")
    got = eval_metrics(checkpoint, renamed, out, "coco", "--class-map", str(tmp_path / "map.yaml"))
    assert "classes matched by name through the class map" in capsys.readouterr().err
    assert got["class_map"] == str(tmp_path / "map.yaml")
    assert got["stats"] == expected["stats"] and expected["AP"] > 0.3
    assert {n: r["AP"] for n, r in got["per_class"].items()} == {
        "kitty": expected["per_class"]["cat"]["AP"],
        "puppy": expected["per_class"]["dog"]["AP"],
    }
    assert {n: r["category_id"] for n, r in got["per_class"].items()} == {"kitty": 9, "puppy": 4}


def test_eval_cli_equals_the_library_on_objects_the_model_finds(tmp_path, checkpoint):
    """VOC annotations rewritten to the checkpoint's own two best boxes per class and image (in
    VOC's 1-based inclusive pixels), so that the APs compared lie well above 0."""
    data = write_voc(tmp_path / "VOCfound")
    model = singleshot.load(checkpoint)
    written = {"cat": 0, "dog": 0}
    for image_id, _, _ in IMAGES:
        det = model.predict(data / "JPEGImages" / f"{image_id}.jpg")[0]
        xml = Path(data / "Annotations" / f"{image_id}.xml").read_text().split("<object>")[0]
        for label, name in ((1, "cat"), (2, "dog")):
            found = det["boxes"][det["labels"] == label].round().int()
            found = found[((found[:, 2:] - found[:, :2]) >= 2).all(1)][:2]  # whole-pixel boxes, not empty
            written[name] += len(found)
            for x1, y1, x2, y2 in found.tolist():
                box = f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                xml += f"<object><name>{name}</name><difficult>0</difficult><bndbox>{box}</bndbox></object>"
        (data / "Annotations" / f"{image_id}.xml").write_text(xml + "</annotation>")
    out = tmp_path / "out"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--metric", "voc07",
                 "--out", str(out), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = evaluate_model(model, open_dataset(data, split="test"), "voc07", progress=False)
    assert metrics["num_ground_truth"] == written and min(written.values()) >= 4
    for label, name in ((1, "cat"), (2, "dog")):
        assert metrics["ap"][name] > 0.2
        assert metrics["ap"][name] == expected["ap"][label]  # the same detections, the same arithmetic
    assert metrics["map"] == expected["map"]


def test_workers_default_to_none_on_the_cpu_and_to_training_s_count_with_a_gpu(
    tmp_path, checkpoint, monkeypatch
):
    import singleshot.evaluation
    from singleshot.cli.eval import loader_workers

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["num_workers"])
        return evaluate_model(*args, **kwargs)

    monkeypatch.setattr(singleshot.evaluation, "evaluate_model", spy)
    data = write_voc(tmp_path / "VOCworkers")
    for extra in ([], ["--workers", "1"]):
        args = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "out")]
        code = main([*args, "--no-progress", *extra])
        assert code == 0
    assert seen == [0, 1]
    # with a GPU, as training: up to 8 per process, one core left to each process's own thread
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, expected in ((16, 8), (4, 3), (1, 0)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert loader_workers(None, torch.device("cuda")) == expected
        assert loader_workers(2, torch.device("cuda")) == 2
    assert loader_workers(None, torch.device("cpu")) == 0
