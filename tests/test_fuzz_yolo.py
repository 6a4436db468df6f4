"""Property-based tests of the YOLO reader and the class-name files over bad input.

The expected outcome is computed here from the format's rules as `singleshot.data.yolo`
documents them: each non-blank line holds ``class cx cy w h``, a class index in 0..K-1
and finite fractions; the box is ((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)
rounded to 1/10000 pixel and clipped to the image; a zero or negative size or a box
outside the image makes the file invalid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fuzzing import GARBAGE_JSON, GARBAGE_NUMBERS, expect_named_error, mutated, parse_float
from singleshot.data import YOLODataset
from singleshot.data.common import read_class_names
from singleshot.data.yolo import read_yolo_classes

pytestmark = pytest.mark.fuzz

W, H = 50, 40
CLASSES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("yolo")
    for sub in ("images/train", "labels/train"):
        (root / sub).mkdir(parents=True)
    image = Image.fromarray(np.full((H, W, 3), 60, dtype=np.uint8))
    for name in ("a_good", "b_fuzz"):
        image.save(root / "images" / "train" / f"{name}.jpg", quality=90)
    (root / "labels" / "train" / "a_good.txt").write_text("1 0.5 0.5 0.2 0.25\n", encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    return root


fraction = st.one_of(
    st.integers(0, 1000).map(lambda v: f"{v / 1000:.3f}"),
    st.integers(-500, 1500).map(lambda v: f"{v / 1000}"),
    st.sampled_from(GARBAGE_NUMBERS),
)
index = st.sampled_from(["0", "1", "2", "3", "-1", "1.0", "1.5", "1e400", "nan", "x", "9" * 30, "2e0"])
line = st.one_of(
    st.tuples(index, fraction, fraction, fraction, fraction).map(" ".join),
    st.lists(st.sampled_from(["0", "0.5", "x", ""]), max_size=7).map(" ".join),
    st.sampled_from(["", "   ", "\t", "0 0.5 0.5 0.1 0.1 " + "9" * 100_000]),
)
ending = st.sampled_from(["\n", "\r\n", "\t\n"])


def expected_line(text: str):
    """(box, label) of a line, "blank", or None if the line is invalid."""
    parts = text.split()
    if not parts:
        return "blank"
    if len(parts) != 5:
        return None
    values = [parse_float(p) for p in parts]
    if None in values or not values[0].is_integer() or not 0 <= values[0] < len(CLASSES):
        return None
    cx, cy, w, h = values[1:]
    if w <= 0 or h <= 0:
        return None
    box = [round(v, 4) for v in ((cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H)]
    box = np.clip(box, 0, [W, H, W, H])
    return (box, int(values[0]) + 1) if box[2] > box[0] and box[3] > box[1] else None


@given(lines=st.lists(line, max_size=4), end=ending, skip=st.booleans())
def test_yolo_reads_what_the_file_says_or_names_it(root, lines, end, skip):
    path = root / "labels" / "train" / "b_fuzz.txt"
    path.write_text(end.join(lines), encoding="utf-8")
    read = [expected_line(text.strip("\r")) for text in lines]
    ds = expect_named_error(lambda: YOLODataset(root, "train", skip_invalid=skip), path)
    if None in read:
        assert (ds is None) != skip
        if skip:
            assert len(ds) == 1 and [where for where, _ in ds.skipped] == [str(path)]
        return
    objects = [r for r in read if r != "blank"]
    assert ds is not None and len(ds) == 2 and not ds.skipped
    target = ds.annotation(1)
    want = np.asarray([box for box, _ in objects], dtype=np.float32).reshape(-1, 4)
    np.testing.assert_allclose(target["boxes"].numpy(), want, atol=2e-4, rtol=0)
    assert target["labels"].tolist() == [label for _, label in objects]
    np.testing.assert_allclose(ds.annotation(0)["boxes"].numpy(), [[20, 15, 30, 25]], atol=1e-4)


VALID_LABELS = b"0 0.5 0.5 0.5 0.5\n2 0.1 0.2 0.1 0.2\n"


@given(data=mutated(VALID_LABELS))
def test_yolo_byte_mutations_fail_cleanly(root, data):
    path = root / "labels" / "train" / "b_fuzz.txt"
    path.write_bytes(data)
    ds = expect_named_error(lambda: YOLODataset(root, "train"), path)
    if ds is None:
        return
    for i in range(len(ds)):
        boxes = ds.annotation(i)["boxes"].numpy()
        assert np.isfinite(boxes).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= W).all() and (boxes[:, [1, 3]] <= H).all()
    if data == VALID_LABELS:
        np.testing.assert_allclose(
            ds.annotation(1)["boxes"].numpy(), [[12.5, 10, 37.5, 30], [2.5, 4, 7.5, 12]]
        )


@given(data=mutated(b"__background__\ncat\ndog\n"))
def test_class_list_mutations_fail_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "classes_fuzz.txt"
    path.write_bytes(data)
    names = expect_named_error(lambda: read_class_names(path), path)
    if names is not None:
        assert names and all(isinstance(n, str) and n and n == n.strip() for n in names)
        assert len(set(names)) == len(names)


scalar_name = st.one_of(
    st.sampled_from(["cat", "dog", "emu", "", 7, 2.5, True]), st.sampled_from(GARBAGE_JSON)
)
names_value = st.one_of(
    st.lists(scalar_name, max_size=4),
    st.dictionaries(
        st.one_of(st.integers(-1, 4), st.sampled_from(["0", "1", "x", 1.5])), scalar_name, max_size=4
    ),
    st.sampled_from(GARBAGE_JSON),
)


def expected_names(names):
    def ok(value):
        return isinstance(value, (str, int, float)) and str(value).strip() != "" and value == value

    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names if not isinstance(k, (bool, float)))
        except ValueError:
            return None
        if len(keys) != len(names) or keys != list(range(len(names))):
            return None
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(ok(n) for n in names):
        return None
    names = [str(n).strip() for n in names]
    return names if len(set(names)) == len(names) else None


@given(names=names_value, text=st.one_of(st.none(), mutated(b"names: [cat, dog]\nnc: 2\n")))
def test_yaml_class_names_are_read_or_refused(tmp_path_factory, names, text):
    path = tmp_path_factory.getbasetemp() / "data_fuzz.yaml"
    if text is None:
        path.write_text(yaml.safe_dump({"names": names}), encoding="utf-8")
    else:
        path.write_bytes(text)
    read = expect_named_error(lambda: read_yolo_classes(path), path)
    if text is None:
        assert read == expected_names(names)
    elif read is not None:
        assert read and all(isinstance(n, str) and n for n in read) and len(set(read)) == len(read)
