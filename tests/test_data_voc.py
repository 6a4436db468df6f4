import io

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.data import VOC_CLASSES, VOCDataset, open_dataset, voc_trainval_07_12

DOG, PERSON, CAT = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("cat") + 1


def obj(name, xmin, ymin, xmax, ymax, difficult=None, truncated=None):
    tags = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    tags += "" if truncated is None else f"<truncated>{truncated}</truncated>"
    return (
        f"<object><name>{name}</name>{tags}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def xml(width, height, *objects, filename=None):
    name = f"<filename>{filename}</filename>" if filename else ""
    return (
        f"<annotation>{name}<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        + "".join(objects)
        + "</annotation>"
    )


def make_voc(root, items, image_set="trainval"):
    """items: {image_id: (PIL image or None, image file name, xml text or None)}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (image, file_name, document) in items.items():
        if image is not None:
            image.save(root / "JPEGImages" / file_name)
        if document is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(document)
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in items))
    return root


def rgb(width, height, colour=(90, 120, 150)):
    return Image.new("RGB", (width, height), colour)


@pytest.fixture
def voc(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 128, np.uint8), "L")
    rgba = Image.fromarray(
        np.dstack([np.full((10, 12, 3), 200, np.uint8), np.zeros((10, 12), np.uint8)]), "RGBA"
    )
    return make_voc(
        tmp_path / "VOC2007",
        {
            "000001": (
                rgb(40, 30),
                "000001.jpg",
                xml(
                    40,
                    30,
                    obj("dog", 1, 1, 10, 20, difficult=1, truncated=0),
                    obj("person", 5.5, 2.5, 30.25, 28, truncated=1),  # floats, no <difficult>
                ),
            ),
            # grayscale JPEG; a box reaching past the right edge (xmax 50 > width 30)
            "000002": (gray, "000002.jpg", xml(30, 20, obj("cat", 21, 11, 50, 20, difficult=0))),
            # PNG with alpha, found through <filename>; no objects
            "000003": (rgba, "000003.png", xml(12, 10, filename="000003.png")),
        },
    )


def test_boxes_labels_flags_exact(voc):
    with pytest.warns(UserWarning, match="1 boxes clipped"):
        ds = VOCDataset(voc, "trainval")
    assert len(ds) == 3 and ds.skipped == []
    assert ds.classes[0] == "__background__" and ds.classes[1:] == list(VOC_CLASSES)
    t = ds.annotation(0)
    # 1-based inclusive (1, 1, 10, 20) -> continuous 0-based (0, 0, 10, 20); floats shift the same way
    assert torch.equal(t["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0], [4.5, 1.5, 30.25, 28.0]]))
    assert t["boxes"].dtype == torch.float32
    assert t["labels"].tolist() == [DOG, PERSON] and t["labels"].dtype == torch.int64
    assert t["difficult"].tolist() == [True, False] and t["difficult"].dtype == torch.bool
    assert t["truncated"].tolist() == [False, True]
    assert t["image_id"] == "000001" and t["size"].tolist() == [30, 40]
    t2 = ds.annotation(1)
    assert torch.equal(t2["boxes"], torch.tensor([[20.0, 10.0, 30.0, 20.0]]))  # clipped at width 30
    assert t2["labels"].tolist() == [CAT] and ds.warnings["boxes clipped to the image"] == 1
    t3 = ds.annotation(2)
    assert t3["boxes"].shape == (0, 4) and t3["labels"].shape == (0,) and t3["size"].tolist() == [10, 12]
    assert ds.image_path(2).name == "000003.png"


def test_getitem_decodes_images_and_applies_transforms(voc):
    calls = []

    def transforms(image, target):
        calls.append(target["image_id"])
        return image.float(), {**target, "extra": 1}

    with pytest.warns(UserWarning):
        plain = VOCDataset(voc)
        ds = VOCDataset(voc, transforms=transforms)
    image, target = plain[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert torch.equal(image[0], image[2])  # grayscale -> equal channels
    rgba_image, _ = plain[2]
    assert rgba_image.shape == (3, 10, 12) and int(rgba_image.min()) == 200  # alpha 0 dropped, colour kept
    x, target = ds[0]
    assert x.dtype == torch.float32 and target["extra"] == 1 and calls == ["000001"]
    assert torch.equal(target["boxes"], plain.annotation(0)["boxes"])


def test_keep_difficult_false_and_custom_classes(tmp_path):
    root = make_voc(
        tmp_path / "v",
        {"a": (rgb(20, 20), "a.jpg", xml(20, 20, obj("b", 1, 1, 5, 5, 1), obj("a", 2, 2, 8, 9)))},
    )
    ds = VOCDataset(root, classes=["a", "b"], keep_difficult=False)
    assert ds.classes == ["__background__", "a", "b"]
    t = ds.annotation(0)
    assert t["labels"].tolist() == [1] and t["boxes"].tolist() == [[1.0, 1.0, 8.0, 9.0]]
    assert t["difficult"].tolist() == [False] and t["truncated"].tolist() == [False]


def truncated_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()[:-200]


GOOD = xml(20, 20, obj("dog", 2, 2, 10, 10))


@pytest.mark.parametrize(
    "document, image_bytes, where, reason",
    [
        (GOOD[:-20], None, "Annotations/bad.xml", "malformed XML"),
        (xml(20, 20, obj("unicorn", 2, 2, 10, 10)), None, "Annotations/bad.xml", "unknown class 'unicorn'"),
        (xml(20, 20, obj("dog", 9, 2, 4, 10)), None, "Annotations/bad.xml", "inverted box"),
        (xml(20, 20, obj("dog", "x", 2, 4, 10)), None, "Annotations/bad.xml", "<xmin> is not a number"),
        (xml(20, 20, obj("dog", 30, 2, 40, 10)), None, "Annotations/bad.xml", "lies outside the 20x20 image"),
        (GOOD, b"", "JPEGImages/bad.jpg", "not a readable image"),
        (GOOD, truncated_jpeg(), "JPEGImages/bad.jpg", "not a readable image"),
        (GOOD, "missing", "JPEGImages/bad.jpg", "image file not found"),
        (None, None, "Annotations/bad.xml", "annotation file not found"),
    ],
)
def test_invalid_items_name_the_file(tmp_path, document, image_bytes, where, reason):
    root = make_voc(
        tmp_path / "v", {"ok": (rgb(20, 20), "ok.jpg", GOOD), "bad": (rgb(20, 20), "bad.jpg", document)}
    )
    if image_bytes == "missing":
        (root / "JPEGImages" / "bad.jpg").unlink()
    elif image_bytes is not None:
        (root / "JPEGImages" / "bad.jpg").write_bytes(image_bytes)
    with pytest.raises(ValueError) as error:
        VOCDataset(root)
    assert str(error.value).startswith(str(root / where)) and reason in str(error.value)
    ds = VOCDataset(root, skip_invalid=True)
    assert len(ds) == 1 and ds.annotation(0)["image_id"] == "ok"
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == str(root / where) and reason in ds.skipped[0][1]


def test_missing_image_set(voc):
    with pytest.raises(ValueError, match=r"ImageSets/Main/val\.txt: image set 'val' not found"):
        VOCDataset(voc, "val")


def test_voc_07_12_concat(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit / "VOC2007", {"a": (rgb(20, 20), "a.jpg", xml(20, 20, obj("dog", 2, 2, 10, 10)))})
    make_voc(
        devkit / "VOC2012",
        {
            "b": (rgb(20, 20), "b.jpg", xml(20, 20, obj("cat", 1, 1, 5, 5))),
            "c": (rgb(24, 20), "c.jpg", xml(24, 20, obj("person", 3, 4, 6, 8))),
        },
    )
    ds = voc_trainval_07_12(devkit)
    assert len(ds) == 3 and ds.classes[0] == "__background__" and len(ds.classes) == 21
    assert [ds.annotation(i)["image_id"] for i in range(3)] == ["a", "b", "c"]
    assert ds.annotation(-1)["boxes"].tolist() == [[2.0, 3.0, 6.0, 8.0]]
    assert ds.image_path(1) == devkit / "VOC2012" / "JPEGImages" / "b.jpg"
    image, target = ds[2]
    assert image.shape == (3, 20, 24) and target["labels"].tolist() == [PERSON]
    with pytest.raises(IndexError):
        ds.annotation(3)
    with pytest.raises(ValueError, match="nothing: no VOC2007 folder"):
        voc_trainval_07_12(tmp_path / "nothing")


def test_open_dataset_voc_with_classes_file(tmp_path):
    root = make_voc(
        tmp_path / "v", {"a": (rgb(20, 20), "a.jpg", xml(20, 20, obj("zebra", 2, 2, 10, 10)))}, "train"
    )
    (root / "classes.txt").write_text("horse\nzebra\n")
    (root / "ImageSets" / "Main" / "zebra_train.txt").write_text("a 1\n")  # a per-class list, not a split
    ds = open_dataset(root, split="train")
    assert isinstance(ds, VOCDataset) and ds.classes == ["__background__", "horse", "zebra"]
    assert ds.annotation(0)["labels"].tolist() == [2]
    with pytest.raises(ValueError, match=r"no split 'test' in this voc dataset \(found: train\)"):
        open_dataset(root, split="test")
