import pytest
import torch
from PIL import Image

from singleshot.data import YOLODataset, open_dataset


def make_yolo(root, items, classes=("cat", "dog", "bird"), split="train"):
    """items: {relative stem: (PIL image, suffix, label text or None)}."""
    for stem, (image, suffix, labels) in items.items():
        image_path = root / "images" / split / f"{stem}{suffix}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(image_path)
        label_path = root / "labels" / split / f"{stem}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        if labels is not None:
            label_path.write_text(labels)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def rgb(width, height):
    return Image.new("RGB", (width, height), (50, 100, 150))


def test_normalised_boxes_to_pixels_exact(tmp_path):
    root = make_yolo(
        tmp_path,
        {
            "a": (rgb(40, 20), ".jpg", "0 0.5 0.5 0.5 0.5\n\n2 0.25 0.5 0.5 1.0\n"),
            "b": (rgb(300, 300), ".png", "1 0.1 0.1 0.1 0.1\n"),
            "c": (rgb(10, 10), ".jpg", ""),  # empty label file
            "d": (rgb(12, 10), ".jpg", None),  # no label file
            "sub/e": (rgb(40, 20), ".jpg", "1 0.9 0.5 0.4 0.2\n"),  # x2 = 1.1 * 40: clipped at 40
        },
    )
    with pytest.warns(UserWarning, match="1 boxes clipped"):
        ds = YOLODataset(root, "train")
    assert ds.classes == ["__background__", "cat", "dog", "bird"]
    assert [ds.annotation(i)["image_id"] for i in range(len(ds))] == ["a", "b", "c", "d", "sub/e"]
    a = ds.annotation(0)
    # cx 0.5 w 0.5 on width 40: 10..30; cy 0.5 h 0.5 on height 20: 5..15
    assert torch.equal(a["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 20.0, 20.0]]))
    assert a["labels"].tolist() == [1, 3] and a["difficult"].tolist() == [False, False]
    assert a["size"].tolist() == [20, 40]
    # 0.1 * 300 carries float noise; the boxes come out as exact pixels
    assert ds.annotation(1)["boxes"].tolist() == [[15.0, 15.0, 45.0, 45.0]]
    assert ds.annotation(2)["boxes"].shape == (0, 4) and ds.annotation(3)["labels"].shape == (0,)
    assert ds.annotation(4)["boxes"].tolist() == [[28.0, 8.0, 40.0, 12.0]]
    image, target = ds[1]
    assert image.shape == (3, 300, 300) and target["labels"].tolist() == [2]


def test_classes_from_yaml(tmp_path):
    root = make_yolo(tmp_path, {"a": (rgb(10, 10), ".jpg", "1 0.5 0.5 0.2 0.2\n")}, classes=None)
    (root / "data.yaml").write_text("path: .\nnames:\n  0: plane\n  1: ship\n")
    ds = YOLODataset(root)
    assert ds.classes == ["__background__", "plane", "ship"] and ds.annotation(0)["labels"].tolist() == [2]
    ds = open_dataset(root, split="train")
    assert isinstance(ds, YOLODataset) and len(ds) == 1


@pytest.mark.parametrize(
    "text, reason",
    [
        ("0 0.5 0.5 0.2\n", "line 1: expected 5 values 'class cx cy w h', got 4"),
        ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n", "line 2: unknown class index 3 (there are 3 classes)"),
        ("1.5 0.5 0.5 0.2 0.2\n", "line 1: class index '1.5' is not an integer"),
        ("0 0.5 abc 0.2 0.2\n", "line 1: not numbers"),
        ("0 0.5 0.5 0 0.2\n", "line 1: empty box"),
        ("0 0.5 0.5 0.2 -0.2\n", "line 1: inverted box"),
        ("0 0.5 0.5 0.2 nan\n", "line 1: values are not finite"),
        ("0 1.5 0.5 0.2 0.2\n", "line 1: box [56.0, 8.0, 64.0, 12.0] lies outside the 40x20 image"),
    ],
)
def test_invalid_labels_name_file_and_line(tmp_path, text, reason):
    root = make_yolo(
        tmp_path, {"ok": (rgb(40, 20), ".jpg", "0 0.5 0.5 0.2 0.2\n"), "bad": (rgb(40, 20), ".jpg", text)}
    )
    label = root / "labels" / "train" / "bad.txt"
    with pytest.raises(ValueError) as error:
        YOLODataset(root)
    assert str(error.value).startswith(f"{label}: {reason}")
    ds = YOLODataset(root, skip_invalid=True)
    assert len(ds) == 1 and ds.skipped[0][0] == str(label) and reason in ds.skipped[0][1]


def test_corrupt_image_and_missing_files(tmp_path):
    root = make_yolo(tmp_path, {"ok": (rgb(20, 20), ".jpg", ""), "bad": (rgb(20, 20), ".jpg", "")})
    (root / "images" / "train" / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ValueError, match=r"images/train/bad\.jpg: not a readable image"):
        YOLODataset(root)
    assert len(YOLODataset(root, skip_invalid=True)) == 1
    with pytest.raises(ValueError, match=r"images/val: split 'val' not found"):
        YOLODataset(root, "val")
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match="no classes.txt"):
        YOLODataset(root)
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"classes\.txt: class names listed more than once: \['a'\]"):
        YOLODataset(root)
