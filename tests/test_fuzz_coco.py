"""Property-based tests of the COCO reader over bad input (wrong JSON types, byte mutations).

The expected outcome is computed here from COCO's rules as `singleshot.data.coco`
documents them: ``bbox`` [x, y, width, height] of finite numbers in continuous 0-based
pixels becomes (x, y, x + width, y + height), clipped to the image; ids are integers; an
unknown image or category, a box that is not four finite numbers, an empty, inverted or
outside box, or an ``iscrowd`` other than 0/1 makes the annotation invalid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fuzzing import GARBAGE_JSON, as_number, expect_named_error, mutated
from singleshot.data import COCODataset

pytestmark = pytest.mark.fuzz

W, H = 40, 30
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
GOOD = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    image = Image.fromarray(np.full((H, W, 3), 120, dtype=np.uint8))
    for name in ("good", "fuzz"):
        image.save(root / f"{name}.jpg", quality=90)
    return root


coordinate = st.one_of(st.integers(-5, 50), st.floats(-5, 50), st.sampled_from(GARBAGE_JSON))
annotation = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(2, 99),
        "image_id": st.sampled_from([2, 2, 2, 99, "2", 2.0, True, None, [2]]),
        "category_id": st.sampled_from([1, 3, 1, 3, 2, "1", 1.0, True, None, [1], 10**30]),
        "bbox": st.one_of(
            st.lists(coordinate, min_size=4, max_size=4),
            st.lists(st.integers(0, 9), max_size=6),
            st.sampled_from(GARBAGE_JSON),
        ),
        "iscrowd": st.sampled_from([0, 1, True, False, 2, -1, "0", None, 0.5, [0]]),
    },
)
annotations = st.lists(st.one_of(annotation, st.sampled_from(GARBAGE_JSON)), max_size=4)
side = st.one_of(st.integers(1, 64), st.sampled_from(GARBAGE_JSON))


def image_size_of(declared: tuple, verify: str):
    if verify != "none":
        return H, W
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31 for v in declared)
    return declared if ok else None


def box_of(annotation: dict, size: tuple[int, int]):
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    x, y, w, h = (as_number(v) for v in bbox)
    if None in (x, y, w, h) or w <= 0 or h <= 0:
        return None
    box = [x, y, x + w, y + h]
    if not all(math.isfinite(v) for v in box):
        return None
    box = np.clip(box, 0, [size[1], size[0], size[1], size[0]])
    return box if box[2] > box[0] and box[3] > box[1] else None


def expected(items: list, declared: tuple, verify: str):
    """(number of annotation-level problems, image 2's (boxes, labels, crowd) or None if invalid)."""
    size = image_size_of(declared, verify)
    loose, mine = 0, []
    for item in items:
        image_id = item.get("image_id") if isinstance(item, dict) else None
        if type(image_id) is not int or image_id != 2:
            loose += 1
        else:
            mine.append(item)
    if size is None:
        return loose, None
    boxes, labels, crowd = [], [], []
    for item in mine:
        category, iscrowd = item.get("category_id"), item.get("iscrowd", 0)
        box = box_of(item, size)
        if type(category) is not int or category not in (1, 3) or box is None:
            return loose, None
        if not (iscrowd in (0, 1) and type(iscrowd) in (int, bool)):
            return loose, None
        boxes.append(box)
        labels.append(1 if category == 1 else 2)
        crowd.append(bool(iscrowd))
    return loose, (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels), np.asarray(crowd, bool))


@given(
    items=annotations,
    declared=st.tuples(side, side),
    verify=st.sampled_from(["quick", "none"]),
    skip=st.booleans(),
)
def test_coco_reads_what_the_file_says_or_names_it(root, items, declared, verify, skip):
    images = [
        {"id": 1, "file_name": "good.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "fuzz.jpg", "height": declared[0], "width": declared[1]},
    ]
    path = root / "instances.json"
    document = {"images": images, "annotations": [GOOD, *items], "categories": CATEGORIES}
    path.write_text(json.dumps(document), encoding="utf-8")
    loose, want = expected(items, declared, verify)
    ds = expect_named_error(
        lambda: COCODataset(root, path, skip_invalid=skip, verify_images=verify), path, root / "fuzz.jpg"
    )
    if not skip and (loose or want is None):
        assert ds is None
        return
    assert ds is not None
    assert len(ds.skipped) == loose + (want is None)
    assert all(where == str(path) and reason for where, reason in ds.skipped)
    assert len(ds) == 1 + (want is not None)
    np.testing.assert_array_equal(ds.annotation(0)["boxes"].numpy(), [[1, 2, 11, 7]])
    if want is not None:
        target = ds.annotation(1)
        np.testing.assert_array_equal(target["boxes"].numpy(), want[0])
        np.testing.assert_array_equal(target["labels"].numpy(), want[1])
        np.testing.assert_array_equal(target["difficult"].numpy(), want[2])
        assert target["size"].tolist() == list(image_size_of(declared, verify))


VALID = json.dumps(
    {
        "images": [{"id": 1, "file_name": "good.jpg", "height": H, "width": W}],
        "annotations": [GOOD, {**GOOD, "id": 2, "category_id": 1, "bbox": [0.5, 0, 39.5, 30]}],
        "categories": CATEGORIES,
    }
).encode()
TOP_LEVEL = st.sampled_from(
    [b"[" * 100_000, b"{" * 50_000, b'{"images": 1e999999}', b"null", b"[]", b'"text"', b"\xef\xbb\xbf{}"]
)


@given(data=st.one_of(mutated(VALID), TOP_LEVEL), verify=st.sampled_from(["quick", "none"]))
def test_coco_byte_mutations_fail_cleanly(root, data, verify):
    path = root / "mutated.json"
    path.write_bytes(data)
    ds = expect_named_error(lambda: COCODataset(root, path, verify_images=verify), path)
    if ds is None:
        return
    for i in range(len(ds)):
        target = ds.annotation(i)
        boxes, (h, w) = target["boxes"].numpy(), target["size"].tolist()
        assert np.isfinite(boxes).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert ((target["labels"] >= 1) & (target["labels"] <= 2)).all()
    if data == VALID:
        np.testing.assert_array_equal(ds.annotation(0)["boxes"].numpy(), [[1, 2, 11, 7], [0.5, 0, 40, 30]])
