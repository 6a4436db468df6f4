"""Property-based tests of the VOC reader over bad input (structured and byte-level mutations).

The expected outcome of each generated annotation is computed here from the format's rules
as `singleshot.data.voc` documents them: 1-based inclusive pixels (xmin, ymin, xmax, ymax)
become continuous 0-based (xmin - 1, ymin - 1, xmax, ymax), clipped to the image; a
missing, repeated, non-numeric or non-finite value, an unknown class, an inverted box
(xmax < xmin) or a box outside the image makes the file invalid.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fuzzing import GARBAGE_NUMBERS, expect_named_error, mutated, parse_float
from singleshot.data import VOCDataset
from singleshot.data.writers import voc_xml

pytestmark = pytest.mark.fuzz

W, H = 48, 36
CLASSES = ["cat", "dog"]
GOOD = voc_xml("good.jpg", H, W, np.array([[2.0, 3.0, 20.0, 30.0]]), np.array([2]), CLASSES)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    image = Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8))
    for name in ("good", "fuzz"):
        image.save(root / "JPEGImages" / f"{name}.jpg", quality=90)
    (root / "Annotations" / "good.xml").write_text(GOOD, encoding="utf-8")
    (root / "ImageSets" / "Main" / "train.txt").write_text("good\nfuzz\n", encoding="utf-8")
    return root


# A tag is a list of texts: [] = missing, [t] = present, [t1, t2] = repeated.
number = st.one_of(
    st.integers(-6, 60).map(str),
    st.floats(-6, 60).map(lambda v: f"{v:.2f}"),
    st.integers(-6, 60).map(lambda v: f"  {v}\n"),
    st.sampled_from(GARBAGE_NUMBERS),
)
flag_text = st.sampled_from(
    ["0", "1", "", " 1 ", "1.0", "0.0", "2", "-1", "0.5", "abc", "inf", "nan", "1e400"]
)
name_text = st.sampled_from([*CLASSES, " cat ", "bird", "", "Cat"])


def tag(values):
    return st.one_of(values.map(lambda v: [v]), st.just([]), st.lists(values, min_size=2, max_size=2))


objects = st.fixed_dictionaries(
    {
        "name": tag(name_text),
        "difficult": tag(flag_text),
        "truncated": tag(flag_text),
        "bndbox": st.one_of(
            st.none(), st.fixed_dictionaries({t: tag(number) for t in ("xmin", "ymin", "xmax", "ymax")})
        ),
    }
)
sizes = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "width": tag(st.sampled_from([str(W), "0", "-3", "7.5", "nan", "inf", "1e400", "x"])),
            "height": tag(st.sampled_from([str(H), "0", "1e400", "-inf", "nan", "", "y"])),
        }
    ),
)


def elements(name: str, texts: list[str]) -> str:
    return "".join(f"<{name}>{escape(t)}</{name}>" for t in texts)


def document(objs: list[dict], size: dict | None) -> str:
    parts = ["<annotation><filename>fuzz.jpg</filename>"]
    if size is not None:
        parts.append(f"<size>{elements('width', size['width'])}{elements('height', size['height'])}</size>")
    for obj in objs:
        parts.append("<object>" + elements("name", obj["name"]) + elements("difficult", obj["difficult"]))
        parts.append(elements("truncated", obj["truncated"]))
        if obj["bndbox"] is not None:
            parts.append("<bndbox>" + "".join(elements(t, v) for t, v in obj["bndbox"].items()) + "</bndbox>")
        parts.append("</object>")
    return "".join(parts) + "</annotation>\n"


def number_of(texts: list[str]) -> float | None:
    return parse_float(texts[0]) if len(texts) == 1 else None


def flag_of(texts: list[str]) -> bool | None:
    if not texts or (len(texts) == 1 and not texts[0].strip()):
        return False
    value = number_of(texts)
    return None if value not in (0.0, 1.0) else bool(value)


def expected(objs: list[dict], size: dict | None):
    """(boxes float32 (n, 4), labels, difficult) the file stands for, or None if it is invalid."""
    if size is not None:
        for texts in size.values():
            if number_of(texts) is None:
                return None
    boxes, labels, difficult = [], [], []
    for obj in objs:
        name = obj["name"][0].strip() if len(obj["name"]) == 1 else None
        flags = flag_of(obj["difficult"]), flag_of(obj["truncated"])
        if name not in CLASSES or obj["bndbox"] is None or None in flags:
            return None
        xmin, ymin, xmax, ymax = (number_of(obj["bndbox"][t]) for t in ("xmin", "ymin", "xmax", "ymax"))
        if None in (xmin, ymin, xmax, ymax) or xmax < xmin or ymax < ymin:
            return None
        box = np.clip([xmin - 1, ymin - 1, xmax, ymax], 0, [W, H, W, H])
        if box[2] <= box[0] or box[3] <= box[1]:
            return None
        boxes.append(box)
        labels.append(CLASSES.index(name) + 1)
        difficult.append(flags[0])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels), np.asarray(difficult, bool)


@given(objs=st.lists(objects, max_size=3), size=sizes, skip=st.booleans())
def test_voc_reads_what_the_file_says_or_names_it(root, objs, size, skip):
    xml = root / "Annotations" / "fuzz.xml"
    xml.write_text(document(objs, size), encoding="utf-8")
    want = expected(objs, size)
    ds = expect_named_error(lambda: VOCDataset(root, "train", CLASSES, skip_invalid=skip), xml)
    if want is None:
        assert (ds is None) != skip
        if skip:  # the good image stays, the invalid one is listed with its reason
            assert len(ds) == 1 and [path for path, _ in ds.skipped] == [str(xml)]
        return
    assert ds is not None and len(ds) == 2 and not ds.skipped
    target = ds.annotation(1)
    np.testing.assert_array_equal(target["boxes"].numpy(), want[0])
    np.testing.assert_array_equal(target["labels"].numpy(), want[1])
    np.testing.assert_array_equal(target["difficult"].numpy(), want[2])
    np.testing.assert_array_equal(ds.annotation(0)["boxes"].numpy(), [[2, 3, 20, 30]])


def check_invariants(ds) -> None:
    for i in range(len(ds)):
        target = ds.annotation(i)
        boxes, (h, w) = target["boxes"].numpy(), target["size"].tolist()
        assert np.isfinite(boxes).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert ((target["labels"] >= 1) & (target["labels"] < ds.num_classes)).all()


valid_xml = voc_xml(
    "fuzz.jpg", H, W, np.array([[0.0, 0.0, 10.0, 12.0], [5.5, 6.0, 47.0, 35.0]]), np.array([1, 2]), CLASSES,
    difficult=np.array([False, True]),
).encode()  # fmt: skip


@given(data=mutated(valid_xml), verify=st.sampled_from(["quick", "none"]))
def test_voc_byte_mutations_fail_cleanly(root, data, verify):
    xml = root / "Annotations" / "fuzz.xml"
    xml.write_bytes(data)
    ds = expect_named_error(lambda: VOCDataset(root, "train", CLASSES, verify_images=verify), xml)
    if ds is not None:
        check_invariants(ds)
        if data == valid_xml:
            np.testing.assert_array_equal(
                ds.annotation(1)["boxes"].numpy(), [[0, 0, 10, 12], [5.5, 6, 47, 35]]
            )


@given(data=mutated(b"good\nfuzz\n"))
def test_voc_image_set_mutations_fail_cleanly(root, data):
    (root / "Annotations" / "fuzz.xml").write_bytes(valid_xml)
    listed = root / "ImageSets" / "Main" / "mutated.txt"
    listed.write_bytes(data)
    ds = expect_named_error(lambda: VOCDataset(root, "mutated", CLASSES), listed, root / "Annotations")
    if ds is not None:
        check_invariants(ds)
