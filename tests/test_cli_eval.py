import json

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
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


def test_eval_coco_dataset_with_coco_metric(tmp_path, checkpoint):
    data = write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "val",
                 "--metric", "coco", "--out", str(out), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "coco"
    assert len(metrics["stats"]) == 12
    assert set(metrics["per_class"]) == {"cat", "dog"}
    assert {row["category_id"] for row in metrics["per_class"].values()} == {17, 18}
    assert 0.0 <= metrics["AP"] <= metrics["AP50"] <= 1.0


def test_eval_reports_bad_inputs(tmp_path, checkpoint, capsys):
    data = write_voc(tmp_path / "VOCsmall")
    (data / "classes.txt").write_text("cat\ndog\nbird\n")
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "predicts 2 classes but" in capsys.readouterr().err
    code = main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)])
    assert code == 1
    assert "missing.pt" in capsys.readouterr().err
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--batch-size", "0"])
    assert code == 1
    assert "--batch-size" in capsys.readouterr().err
