"""One model, one set of images and boxes: `singleshot eval` gives the same mAP, class by class,
whichever layout the dataset arrives in, with the classes listed in whatever order the tool
wrote them (a class is its name, not its index)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.data.writers import make_writer

CLASSES = ["circle", "square", "triangle"]
SIZES = [(64, 80), (70, 50), (60, 60), (90, 72), (56, 96)]  # (H, W)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", num_classes=4, class_names=["__background__", *CLASSES])
    with torch.no_grad():  # an untrained model made confident somewhere, so that it scores
        for conv in model.head.conf:
            conv.bias.view(-1, 4)[:, 1:] += 2.0
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def samples(checkpoint, tmp_path_factory):
    """[(name, image (H, W, 3) uint8, boxes (n, 4) whole pixels, labels (n,) 1..3)]: each image's
    ground truth is the model's own two best detections of each class, rounded to whole pixels
    (whole pixels: VOC stores integers), so that AP lies well between 0 and 1."""
    model, folder = singleshot.load(checkpoint), tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    out = []
    for k, (h, w) in enumerate(SIZES):
        # smooth pictures, which JPEG (as the VOC and YOLO writers store them) changes little
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR))
        Image.fromarray(image).save(folder / f"{k}.jpg", quality=90)
        det = model.predict(folder / f"{k}.jpg", score_threshold=0.01)[0]
        boxes, labels = [], []
        for label in (1, 2, 3):
            for box in det["boxes"][det["labels"] == label][:2].round():
                if (box[2:] - box[:2]).min() >= 2:
                    boxes.append(box.tolist())
                    labels.append(label)
        out.append((f"img{k}", image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels)))
    return out


def write(format, root, samples, split="val"):
    writer = make_writer(format, root, CLASSES)
    for name, image, boxes, labels in samples:
        writer.add(split, name, image, boxes, labels)
    writer.close()
    return root


def coco_reordered(root, samples):
    """COCO's own layout, as a labelling tool re-exports it: categories in another order with
    other ids (triangle 4, circle 9, square 2)."""
    write("coco", root, samples)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    new_ids = {"triangle": 4, "circle": 9, "square": 2}
    old_to_new = {c["id"]: new_ids[c["name"]] for c in data["categories"]}
    data["categories"] = [{"id": i, "name": n, "supercategory": "shape"} for n, i in new_ids.items()]
    for annotation in data["annotations"]:
        annotation["category_id"] = old_to_new[annotation["category_id"]]
    path.write_text(json.dumps(data))
    return root, "val"


def roboflow_coco(root, samples):
    """<split>/_annotations.coco.json beside the images, Roboflow's grouping category first."""
    source = write("coco", root.parent / f"{root.name}_src", samples)
    shutil.copytree(source / "images" / "val", root / "valid")
    data = json.loads((source / "annotations" / "instances_val.json").read_text())
    for category in data["categories"]:  # Roboflow names the grouping category as every class's parent
        category["supercategory"] = "shapes"
    data["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    (root / "valid" / "_annotations.coco.json").write_text(json.dumps(data))
    return root, "valid"


def ultralytics_reordered(root, samples):
    """data.yaml with names as a dict in another order, the label files renumbered to match."""
    write("yolo", root, samples)
    order = ["square", "triangle", "circle"]
    renumber = {CLASSES.index(name): k for k, name in enumerate(order)}
    for label_file in (root / "labels" / "val").glob("*.txt"):
        lines = [line.split(" ", 1) for line in label_file.read_text().splitlines()]
        label_file.write_text("".join(f"{renumber[int(c)]} {rest}\n" for c, rest in lines))
    (root / "classes.txt").unlink()
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(order))
    (root / "data.yaml").write_text(f"path: .\nval: images/val\nnames:\n{names}")
    return root, "val"


def label_studio_voc(root, samples):
    """Annotations/ + images/, no ImageSets and no class list: the classes come sorted by name."""
    source = write("voc", root.parent / f"{root.name}_src", samples)
    shutil.copytree(source / "Annotations", root / "Annotations")
    shutil.copytree(source / "JPEGImages", root / "images")
    return root, "all"


LAYOUTS = {
    "voc": lambda root, samples: (write("voc", root, samples), "val"),
    "coco": lambda root, samples: (write("coco", root, samples), "val"),
    "yolo": lambda root, samples: (write("yolo", root, samples), "val"),
    "coco_reordered": coco_reordered,
    "roboflow_coco": roboflow_coco,
    "ultralytics_reordered": ultralytics_reordered,
    "label_studio_voc": label_studio_voc,
}


def test_the_same_map_in_every_layout(tmp_path, checkpoint, samples, capsys):
    results = {}
    for name, build in LAYOUTS.items():
        root, split = build(tmp_path / name, samples)
        out = tmp_path / f"out_{name}"
        code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--split", split,
                     "--metric", "voc07", "--out", str(out), "--workers", "0", "--no-progress",
                     "--no-winograd"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        results[name] = json.loads((out / "metrics.json").read_text())
    reference = results["voc"]
    assert set(reference["ap"]) == set(CLASSES)  # every class has ground truth
    assert 0.2 < reference["map"] < 1.0 and len(set(reference["ap"].values())) > 1  # a swap would show
    for name, metrics in results.items():
        assert metrics["ap"] == reference["ap"], name
        assert metrics["map"] == reference["map"], name
