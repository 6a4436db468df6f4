import json

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.data import COCODataset, open_dataset

CATEGORIES = [{"id": 7, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def annotation(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}


def make_coco(root, images, annotations, categories=CATEGORIES, split="val", image_subdir=True):
    """images: list of (id, file name, PIL image or None, declared (w, h))."""
    image_dir = root / "images" / split if image_subdir else root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, name, picture, (width, height) in images:
        if picture is not None:
            picture.save(image_dir / name)
        entries.append({"id": image_id, "file_name": name, "width": width, "height": height})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return image_dir, path


@pytest.fixture
def coco(tmp_path):
    rgba = Image.fromarray(np.full((30, 50, 4), 60, np.uint8), "RGBA")
    images = [
        (42, "a.jpg", Image.new("RGB", (40, 30), (1, 2, 3)), (40, 30)),
        (7, "empty.jpg", Image.new("RGB", (16, 16)), (16, 16)),  # no annotations: kept
        (5, "b.png", rgba, (50, 30)),
    ]
    annotations = [
        annotation(1, 42, 3, [2.5, 3.0, 10.0, 20.5]),
        annotation(2, 5, 7, [0, 0, 50, 30], iscrowd=1),
        annotation(3, 42, 1, [30.0, 10.0, 15.0, 5.0]),  # reaches x = 45 > 40: clipped
        annotation(4, 5, 1, [1, 2, 3, 4]),
    ]
    return make_coco(tmp_path, images, annotations)


def test_sparse_category_ids_map_both_ways(coco):
    with pytest.warns(UserWarning, match="1 boxes clipped"):
        ds = COCODataset(*coco)
    assert ds.classes == ["__background__", "person", "car", "kite"]  # ascending category id
    assert ds.category_id_to_label == {1: 1, 3: 2, 7: 3}
    assert ds.label_to_category_id == {1: 1, 2: 3, 3: 7}
    assert ds.annotation_file == coco[1]


def test_boxes_crowd_and_empty_images_exact(coco):
    with pytest.warns(UserWarning):
        ds = COCODataset(*coco)
    assert len(ds) == 3 and [ds.annotation(i)["image_id"] for i in range(3)] == [42, 7, 5]
    a = ds.annotation(0)
    # xywh -> xyxy; the second box is clipped at the image's width 40
    assert torch.equal(a["boxes"], torch.tensor([[2.5, 3.0, 12.5, 23.5], [30.0, 10.0, 40.0, 15.0]]))
    assert a["labels"].tolist() == [2, 1] and a["difficult"].tolist() == [False, False]
    assert a["size"].tolist() == [30, 40]
    empty = ds.annotation(1)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    b = ds.annotation(2)
    assert b["boxes"].tolist() == [[0.0, 0.0, 50.0, 30.0], [1.0, 2.0, 4.0, 6.0]]
    assert b["labels"].tolist() == [3, 1] and b["difficult"].tolist() == [True, False]  # iscrowd
    image, target = ds[2]
    assert image.shape == (3, 30, 50) and int(image.max()) == 60 and target["image_id"] == 5
    assert ds.image_path(0) == coco[0] / "a.jpg"


def good_images():
    return [
        (1, "a.jpg", Image.new("RGB", (20, 20)), (20, 20)),
        (2, "b.jpg", Image.new("RGB", (20, 20)), (20, 20)),
    ]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (annotation(9, 2, 99, [1, 1, 5, 5]), "annotation 9: unknown category_id 99"),
        (annotation(9, 2, 1, [1, 1, 0, 5]), "annotation 9: empty box"),
        (annotation(9, 2, 1, [1, 1, -3, 5]), "annotation 9: inverted box"),
        (annotation(9, 2, 1, [1, 1, 5]), "annotation 9: 'bbox' must be [x, y, width, height]"),
        (annotation(9, 2, 1, [1, "a", 5, 5]), "annotation 9: 'bbox' has a non-numeric value"),
        (annotation(9, 2, 1, [25, 1, 5, 5]), "lies outside the 20x20 image"),
        (annotation(9, 2, 1, [1, 1, float("inf"), 5]), "annotation 9: 'bbox' is not finite"),
        (annotation(9, 2, 1, [1, 1, 10**400, 5]), "annotation 9: 'bbox' is not finite"),
        (annotation(9, 2, 1, [1, 1, 5, 5], iscrowd=2), "annotation 9: 'iscrowd' must be 0 or 1, got 2"),
    ],
)
def test_invalid_annotations_name_the_file(tmp_path, bad, reason):
    image_dir, path = make_coco(tmp_path, good_images(), [annotation(1, 1, 1, [1, 1, 5, 5]), bad])
    with pytest.raises(ValueError) as error:
        COCODataset(image_dir, path)
    message = str(error.value)
    assert message.startswith(f"{path}: image 2 (b.jpg)") and reason in message
    ds = COCODataset(image_dir, path, skip_invalid=True)
    assert [ds.annotation(i)["image_id"] for i in range(len(ds))] == [1]
    assert ds.skipped[0][0] == str(path) and reason in ds.skipped[0][1]


def test_annotation_of_unknown_image(tmp_path):
    image_dir, path = make_coco(tmp_path, good_images(), [annotation(5, 77, 1, [1, 1, 5, 5])])
    with pytest.raises(ValueError, match=r"instances_val\.json: annotation 0 \(id 5\): unknown image_id 77"):
        COCODataset(image_dir, path)
    assert len(COCODataset(image_dir, path, skip_invalid=True)) == 2


@pytest.mark.parametrize("content", [b"", b"corrupt", "truncate"])
def test_bad_images_name_the_image(tmp_path, content):
    image_dir, path = make_coco(tmp_path, good_images(), [])
    if content == "truncate":
        data = (image_dir / "b.jpg").read_bytes()
        (image_dir / "b.jpg").write_bytes(data[: len(data) // 2])
    else:
        (image_dir / "b.jpg").write_bytes(content)
    with pytest.raises(ValueError, match=r"images/val/b\.jpg: not a readable image"):
        COCODataset(image_dir, path)
    ds = COCODataset(image_dir, path, skip_invalid=True)
    assert len(ds) == 1 and ds.skipped[0][0] == str(image_dir / "b.jpg")


def test_missing_image(tmp_path):
    image_dir, path = make_coco(tmp_path, good_images(), [])
    (image_dir / "a.jpg").unlink()
    with pytest.raises(ValueError, match=r"images/val/a\.jpg: image file not found"):
        COCODataset(image_dir, path)
    # verify_images="none" trusts the JSON and never touches the files
    assert COCODataset(image_dir, path, verify_images="none").annotation(0)["size"].tolist() == [20, 20]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "malformed JSON"),
        ('{"images": []}', "missing the 'categories' list"),
        ("[]", "JSON object"),
        ('{"images": [], "annotations": [], "categories": [{"id": ' + "9" * 5000 + "}]}", "malformed JSON"),
        (
            '{"images": [], "annotations": {}, "categories": [{"id": 1, "name": "a"}]}',
            "'annotations' is not a list",
        ),
        ('{"images": [], "annotations": [], "categories": []}', "no categories"),
        (
            '{"images": [], "annotations": [], "categories": [{"name": "a"}]}',
            "category 0 has no integer 'id'",
        ),
        (
            json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}] * 2}),
            "category id 1 appears twice",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 3, "file_name": "a.jpg"}] * 2,
                    "annotations": [],
                    "categories": [{"id": 1, "name": "a"}],
                }
            ),
            "image id 3 appears twice",
        ),
    ],
)
def test_malformed_json_always_raises(tmp_path, text, reason):
    path = tmp_path / "instances.json"
    path.write_text(text)
    for skip in (False, True):
        with pytest.raises(ValueError, match=f"instances.json: .*{reason}"):
            COCODataset(tmp_path, path, skip_invalid=skip)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"absent\.json: annotation file not found"):
        COCODataset(tmp_path, tmp_path / "absent.json")


@pytest.mark.parametrize(
    "entry, reason",
    [({"file_name": "b.jpg", "width": 20, "height": 20}, "image entry 1 has no integer 'id'"),
     ({"id": 2, "width": 20, "height": 20}, "image 2: no 'file_name'")],
)  # fmt: skip
def test_image_entries_without_id_or_file_name(tmp_path, entry, reason):
    image_dir, path = make_coco(tmp_path, good_images(), [annotation(1, 1, 1, [1, 1, 5, 5])])
    data = json.loads(path.read_text())
    data["images"][1] = entry
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"instances_val.json: {reason}"):
        COCODataset(image_dir, path)
    ds = COCODataset(image_dir, path, skip_invalid=True)
    assert len(ds) == 1 and reason in ds.skipped[0][1]


def test_open_dataset_coco_layouts(tmp_path):
    make_coco(tmp_path / "ours", good_images(), [annotation(1, 1, 3, [1, 1, 5, 5])], split="train")
    ds = open_dataset(tmp_path / "ours", split="train")
    assert isinstance(ds, COCODataset) and ds.annotation(0)["labels"].tolist() == [2]
    # COCO's own layout: train2017/ next to annotations/
    make_coco(tmp_path / "coco", good_images(), [], split="val2017", image_subdir=False)
    ds = open_dataset(tmp_path / "coco", format="coco", split="val2017")
    assert ds.image_path(1) == tmp_path / "coco" / "val2017" / "b.jpg"
    with pytest.raises(ValueError, match=r"no split 'train' .*found: val2017"):
        open_dataset(tmp_path / "coco", split="train")
