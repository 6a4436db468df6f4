"""The layouts of other tools' exports: the same samples written the way each tool writes
them read back as the same targets (boxes, class names, image sizes), detection names the
layout, and the CLI reports it."""

import json
import shutil

import numpy as np
import pytest

from singleshot.cli import main
from singleshot.data import (
    describe_layout,
    detect_format,
    detect_layout,
    list_splits,
    open_coco,
    open_dataset,
)
from singleshot.data.synthetic import SYNTH_CLASSES, render_sample
from singleshot.data.writers import make_writer, voc_xml

CLASSES = list(SYNTH_CLASSES)
SPLITS = {"train": 4, "test": 2}
HEIGHT, WIDTH = 48, 64  # not square, so that a swapped width and height shows


def samples():
    """{split: [(name, image (48, 64, 3), boxes float32 (n, 4), labels (n,))]}: synthetic shapes
    drawn on 48x48, padded on the right to 64 columns (the boxes stay where they are)."""
    out = {}
    for s, (split, count) in enumerate(SPLITS.items()):
        out[split] = []
        for i in range(count):
            image, boxes, labels, _ = render_sample(np.random.default_rng([7, s, i]), HEIGHT)
            padded = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
            padded[:, :HEIGHT] = image
            out[split].append((f"{split}_{i:03d}", padded, boxes, labels))
    return out


SAMPLES = samples()


def expected(split):
    """{image stem: (height, width, boxes as lists, class names)} of the original samples."""
    return {
        name: (HEIGHT, WIDTH, boxes.tolist(), [CLASSES[k - 1] for k in labels])
        for name, _, boxes, labels in SAMPLES[split]
    }


def read_back(dataset):
    result = {}
    for k in range(len(dataset)):
        target = dataset.annotation(k)
        names = [dataset.classes[label] for label in target["labels"].tolist()]
        height, width = target["size"].tolist()
        result[dataset.image_path(k).stem] = (height, width, target["boxes"].tolist(), names)
    return result


def write(format, out):
    """singleshot's own layout of the samples (the writers the other layouts start from)."""
    writer = make_writer(format, out, CLASSES)
    for split, items in SAMPLES.items():
        for name, image, boxes, labels in items:
            writer.add(split, name, image, boxes, labels)
    writer.close()
    return out


def coco_document(split, source, name_prefix="", category_offset=0, first_id=1):
    data = json.loads((source / "annotations" / f"instances_{split}.json").read_text())
    for image in data["images"]:
        image["file_name"] = name_prefix + image["file_name"]
        image["id"] += first_id - 1
    for annotation in data["annotations"]:
        annotation["category_id"] += category_offset
        annotation["image_id"] += first_id - 1
    for category in data["categories"]:
        category["id"] += category_offset
    return data


# -- each tool's layout, built from singleshot's own ------------------------------------------
def roboflow_coco(tmp_path):
    source, root = write("coco", tmp_path / "src"), tmp_path / "roboflow_coco"
    for split, folder in (("train", "train"), ("test", "valid")):
        shutil.copytree(source / "images" / split, root / folder)
        data = coco_document(split, source)
        for category in data["categories"]:
            category["supercategory"] = "shapes"
        data["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
        (root / folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root, {"train": "train", "valid": "test"}


def cvat_coco(tmp_path):
    """CVAT COCO 1.0 as older CVAT wrote it: one images/ folder for the subset "default"."""
    source, root = write("coco", tmp_path / "src"), tmp_path / "cvat_coco"
    shutil.copytree(source / "images" / "train", root / "images")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_default.json").write_text(json.dumps(coco_document("train", source)))
    return root, {"default": "train"}


def label_studio_coco(tmp_path):
    """Label Studio: result.json with file_name "images/<name>", ids and categories from 0."""
    source, root = write("coco", tmp_path / "src"), tmp_path / "ls_coco"
    shutil.copytree(source / "images" / "train", root / "images")
    data = coco_document("train", source, name_prefix="images/", category_offset=-1, first_id=0)
    (root / "result.json").write_text(json.dumps(data))
    return root, {"all": "train"}


def cvat_voc(tmp_path):
    source, root = write("voc", tmp_path / "src"), tmp_path / "cvat_voc"
    for sub in ("Annotations", "JPEGImages"):
        shutil.copytree(source / sub, root / sub)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    train = (source / "ImageSets" / "Main" / "train.txt").read_text()
    (root / "ImageSets" / "Main" / "default.txt").write_text(train)
    labelmap = "# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
    labelmap += "".join(f"{name}:{k * 20},0,0::\n" for k, name in enumerate(CLASSES, 1))
    (root / "labelmap.txt").write_text(labelmap)
    return root, {"default": "train"}


def label_studio_voc(tmp_path):
    """Label Studio: Annotations/<stem>.xml whose <filename> is the stem, images/, no class list."""
    root = tmp_path / "ls_voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "images").mkdir()
    source = write("voc", tmp_path / "src")
    for name, _, boxes, labels in SAMPLES["train"]:
        shutil.copy(source / "JPEGImages" / f"{name}.jpg", root / "images" / f"{name}.jpg")
        document = voc_xml(name, HEIGHT, WIDTH, boxes, labels, CLASSES, folder="images")
        (root / "Annotations" / f"{name}.xml").write_text(document)
    return root, {"all": "train"}


def ultralytics(tmp_path):
    """data.yaml with path, a .txt list for train, a list of folders for val, names as a dict."""
    root = write("yolo", tmp_path / "ultra")
    (root / "classes.txt").unlink()
    listed = "".join(f"images/train/{name}.jpg\n" for name, *_ in SAMPLES["train"])
    (root / "train.txt").write_text(listed)
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(CLASSES))
    (root / "data.yaml").write_text(f"path: .\ntrain: train.txt\nval: [images/test]\nnames:\n{names}")
    return root, {"train": "train", "val": "test"}


def roboflow_yolo(tmp_path):
    source, root = write("yolo", tmp_path / "src"), tmp_path / "roboflow_yolo"
    for split, folder in (("train", "train"), ("test", "valid")):
        shutil.copytree(source / "images" / split, root / folder / "images")
        shutil.copytree(source / "labels" / split, root / folder / "labels")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n\n"
        f"nc: {len(CLASSES)}\nnames: {json.dumps(CLASSES)}\n\n"
        "roboflow:\n  workspace: w\n  project: shapes\n  version: 1\n  license: CC BY 4.0\n"
    )
    return root, {"train": "train", "val": "test"}


def cvat_yolo(tmp_path):
    source, root = write("yolo", tmp_path / "src"), tmp_path / "cvat_yolo"
    lists = {}
    for split, subset in (("train", "train"), ("test", "valid")):
        folder = root / f"obj_{subset}_data"
        shutil.copytree(source / "images" / split, folder)
        for label in (source / "labels" / split).glob("*.txt"):
            shutil.copy(label, folder / label.name)
        lists[subset] = "".join(f"obj_{subset}_data/{p.name}\n" for p in sorted(folder.glob("*.jpg")))
        (root / f"{subset}.txt").write_text(lists[subset])
    (root / "obj.names").write_text("".join(f"{name}\n" for name in CLASSES))
    (root / "obj.data").write_text(
        f"classes = {len(CLASSES)}\nnames = obj.names\ntrain = train.txt\nvalid = valid.txt\n"
        "backup = backup/\n"
    )
    return root, {"train": "train", "valid": "test"}


def label_studio_yolo(tmp_path):
    source, root = write("yolo", tmp_path / "src"), tmp_path / "ls_yolo"
    shutil.copytree(source / "images" / "train", root / "images")
    shutil.copytree(source / "labels" / "train", root / "labels")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    notes = {"categories": [{"id": k, "name": n} for k, n in enumerate(CLASSES)], "info": {"version": "1.0"}}
    (root / "notes.json").write_text(json.dumps(notes))
    return root, {"all": "train"}


LAYOUTS = {
    "Roboflow COCO (train/_annotations.coco.json)": roboflow_coco,
    "COCO (annotations/instances_default.json)": cvat_coco,
    "Label Studio COCO (result.json)": label_studio_coco,
    "CVAT Pascal VOC (labelmap.txt)": cvat_voc,
    "Label Studio VOC (Annotations/)": label_studio_voc,
    "Ultralytics YOLO (data.yaml)": ultralytics,
    "Roboflow YOLO (data.yaml)": roboflow_yolo,
    "CVAT YOLO (obj.names)": cvat_yolo,
    "Label Studio YOLO (notes.json)": label_studio_yolo,
}


@pytest.mark.parametrize("description", list(LAYOUTS))
def test_every_layout_reads_back_the_original_samples(tmp_path, description):
    root, splits = LAYOUTS[description](tmp_path)
    assert describe_layout(root) == description
    assert list_splits(root) == sorted(splits)
    format = detect_format(root)
    for split, original in splits.items():
        dataset = open_dataset(root, split=split)
        names = sorted(CLASSES) if "Label Studio VOC" in description else CLASSES  # no class list there
        assert dataset.classes[1:] == names
        assert read_back(dataset) == expected(original), (description, split)
        assert type(dataset).__name__.lower().startswith(format)


def test_singleshot_layouts_are_still_found(tmp_path):
    for format in ("voc", "coco", "yolo"):
        root = write(format, tmp_path / format)
        assert detect_format(root) == format and list_splits(root) == ["test", "train"]
        assert read_back(open_dataset(root, split="test")) == expected("test")
    assert describe_layout(tmp_path / "voc") == "Pascal VOC (ImageSets/Main/)"
    assert describe_layout(tmp_path / "yolo") == "YOLO (images/)"


def test_a_format_given_limits_the_layouts_tried(tmp_path):
    root, _ = label_studio_yolo(tmp_path)
    assert describe_layout(root, "yolo") == "Label Studio YOLO (notes.json)"
    with pytest.raises(ValueError, match="unknown coco dataset layout") as error:
        detect_layout(root, "coco")
    assert "result.json + images/" in str(error.value) and "notes.json" not in str(error.value)


def test_unknown_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError) as error:
        open_dataset(tmp_path / "photos")
    message = str(error.value)
    assert "unknown dataset layout; looked for (relative to this folder):" in message
    for marker in (
        "Annotations/ + ImageSets/Main/",
        "annotations/instances_<split>.json",
        "<split>/_annotations.coco.json",
        "result.json + images/",
        "data.yaml or dataset.yaml with train/val/test",
        "obj.names + obj_<subset>_data/",
        "notes.json + classes.txt + images/ + labels/",
        "images/<split>/ + labels/<split>/",
    ):
        assert marker in message


def test_ultralytics_yaml_path_outside_the_folder_and_missing_split(tmp_path):
    data = write("yolo", tmp_path / "datasets" / "shapes")
    config = tmp_path / "config"
    config.mkdir()
    (config / "data.yaml").write_text(
        f"path: ../datasets/shapes\ntrain: images/train\nval: images/test\nnames: {json.dumps(CLASSES)}\n"
    )
    assert describe_layout(config) == "Ultralytics YOLO (data.yaml)" and list_splits(config) == [
        "train",
        "val",
    ]
    assert read_back(open_dataset(config, split="val")) == expected("test")
    with pytest.raises(ValueError, match=r"no split 'test' .*found: train, val"):
        open_dataset(config, split="test")
    (config / "data.yaml").write_text("train: images/nowhere\nnames: [a]\n")
    with pytest.raises(ValueError, match="images/nowhere: no such image folder"):
        open_dataset(config, split="train")
    assert data.is_dir()


@pytest.mark.parametrize(("format", "name"), [("voc", "Pascal VOC"), ("coco", "COCO"), ("yolo", "YOLO")])
def test_a_format_given_for_a_folder_without_its_files_says_no_split_was_found(tmp_path, format, name):
    (tmp_path / "empty").mkdir()
    assert describe_layout(tmp_path / "empty", format) == f"{name} (format given)"
    with pytest.raises(ValueError) as error:
        open_dataset(tmp_path / "empty", format=format, split="train")
    assert str(error.value) == (
        f"{tmp_path / 'empty'}: no split 'train' in this {format} dataset (found: none) in the {name} layout"
    )


def test_bad_dataset_arguments_are_named(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a dataset")
    with pytest.raises(ValueError, match=r"unknown dataset format 'pascal'; expected one of \('voc', 'coco'"):
        open_dataset(tmp_path, format="pascal")
    with pytest.raises(ValueError, match=r"notes\.txt: not a folder"):
        open_dataset(tmp_path / "notes.txt", format="voc")
    with pytest.raises(ValueError, match=r"nowhere: no such image folder \(--images\)"):
        open_coco(tmp_path / "nowhere", tmp_path / "notes.txt")


def test_open_coco_explicit_files(tmp_path):
    source = write("coco", tmp_path / "src")
    dataset = open_coco(source / "images" / "test", source / "annotations" / "instances_test.json")
    assert read_back(dataset) == expected("test")
    with pytest.raises(ValueError, match="no such annotation file"):
        open_coco(source / "images" / "test", source / "nothing.json")


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "description", ["Roboflow COCO (train/_annotations.coco.json)", "CVAT YOLO (obj.names)"]
)
def test_data_check_prints_the_layout(tmp_path, capsys, description):
    root, splits = LAYOUTS[description](tmp_path)
    assert main(["data", "check", str(root)]) == 0
    report = capsys.readouterr().out
    assert f"layout: {description}" in report
    assert f"splits: {', '.join(sorted(splits))}" in report and report.rstrip().endswith(
        "OK: 0 invalid item(s)"
    )


def test_data_check_unknown_layout(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "unknown dataset layout" in error and "<split>/_annotations.coco.json" in error


def test_data_check_images_and_annotations(tmp_path, capsys):
    source = write("coco", tmp_path / "src")
    images, annotations = source / "images" / "train", source / "annotations" / "instances_train.json"
    assert main(["data", "check", "--images", str(images), "--annotations", str(annotations)]) == 0
    report = capsys.readouterr().out
    assert "layout: COCO files (--images, --annotations)" in report
    assert f"{len(SAMPLES['train'])} images" in report and report.rstrip().endswith("OK: 0 invalid item(s)")
    assert main(["data", "check", "--images", str(images)]) == 1
    assert "--images and --annotations go together" in capsys.readouterr().err
    assert (
        main(["data", "check", str(source), "--images", str(images), "--annotations", str(annotations)]) == 1
    )
    assert "not both" in capsys.readouterr().err
