import colorsys
import hashlib

import numpy as np
import pytest
import torch

from singleshot.data import COCODataset, VOCDataset, YOLODataset, open_dataset
from singleshot.data.synthetic import SYNTH_CLASSES, generate_sample, write_dataset

# The base hue of each class, in degrees (red circle, blue square, green triangle, ...).
CLASS_RGB = [(215, 40, 40), (45, 80, 225), (40, 180, 65), (240, 205, 40), (200, 55, 210), (40, 200, 215)]
CLASS_HUES = [colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for rgb in CLASS_RGB]


def hue_and_spread(image):
    a = image.float() / 255
    high, low = a.max(0).values, a.min(0).values
    d = high - low + 1e-6
    r, g, b = a
    hue = (
        torch.where(high == r, ((g - b) / d) % 6, torch.where(high == g, (b - r) / d + 2, (r - g) / d + 4))
        * 60
    )
    return hue, (high - low) * 255


def test_same_seed_same_sample_and_seeds_differ():
    image, boxes, labels = generate_sample(5, 96)
    again = generate_sample(np.random.default_rng(5), 96)
    assert torch.equal(image, again[0]) and torch.equal(boxes, again[1]) and torch.equal(labels, again[2])
    assert not torch.equal(image, generate_sample(6, 96)[0])


def test_sample_contract_over_many_seeds():
    assert len(SYNTH_CLASSES) == 6 and len(set(SYNTH_CLASSES)) == 6
    counts = np.zeros(7, dtype=int)
    empty = 0
    for seed in range(60):
        image, boxes, labels = generate_sample(seed, 80)
        assert image.dtype == torch.uint8 and image.shape == (3, 80, 80)
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and len(boxes) == len(labels)
        if len(labels) == 0:
            empty += 1
            continue
        assert torch.equal(boxes, boxes.round())  # pixel-aligned
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 80).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert labels.min() >= 1 and labels.max() <= 6
        counts += np.bincount(labels.numpy(), minlength=7)
    assert (counts[1:] > 0).all()  # every class appears
    assert 0 < empty < 20  # some images without objects, not many
    assert len(generate_sample(0, 64, empty_fraction=1.0)[1]) == 0


@pytest.mark.parametrize("size", [96, 160])
def test_box_is_tight_around_the_class_coloured_object(size):
    # Pixels of the object's own hue fill its box, touch its four sides, and do not spill out.
    for seed in range(25):
        image, boxes, labels = generate_sample(seed, size, max_objects=1, empty_fraction=0.0)
        assert len(labels) == 1
        hue, spread = hue_and_spread(image)
        distance = ((hue - CLASS_HUES[int(labels[0]) - 1] + 180) % 360 - 180).abs()
        mask = (spread > 60) & (distance < 30)
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        inside = mask[y1:y2, x1:x2]
        assert inside.float().mean() > 0.25, seed
        ys, xs = torch.nonzero(inside, as_tuple=True)
        assert xs.min() <= 2 and ys.min() <= 2, seed
        assert xs.max() >= x2 - x1 - 3 and ys.max() >= y2 - y1 - 3, seed
        ring = mask[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2].sum() - inside.sum()
        assert ring <= 0.05 * (x2 - x1 + y2 - y1) * 4, seed


def test_sizes_and_object_counts_follow_the_options():
    sides = []
    for seed in range(40):
        _, boxes, labels = generate_sample(seed, 128, max_objects=2, min_size=0.3, max_size=0.4)
        assert len(labels) <= 2
        sides += ((boxes[:, 2:] - boxes[:, :2]).prod(1).sqrt() / 128).tolist()
    # visible boxes of 0.3-0.4 sqrt-area shapes: never tiny, never the whole image
    assert min(sides) > 0.15 and max(sides) < 0.75
    with pytest.raises(ValueError, match="min_size <= max_size"):
        generate_sample(0, 64, min_size=0.5, max_size=0.2)


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("format", ["voc", "coco", "yolo"])
def test_write_dataset_same_seed_same_bytes(tmp_path, format):
    a = write_dataset(tmp_path / "a", format, num_train=4, num_test=2, size=64, seed=1)
    b = write_dataset(tmp_path / "b", format, num_train=4, num_test=2, size=64, seed=1)
    c = write_dataset(tmp_path / "c", format, num_train=4, num_test=2, size=64, seed=2)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)


@pytest.mark.parametrize(
    "format, reader", [("voc", VOCDataset), ("coco", COCODataset), ("yolo", YOLODataset)]
)
def test_written_files_load_back_with_identical_boxes(tmp_path, format, reader):
    out = write_dataset(tmp_path / format, format, num_train=6, num_test=3, size=96, seed=4)
    for split_index, (split, count) in enumerate((("train", 6), ("test", 3))):
        ds = open_dataset(out, split=split)
        assert isinstance(ds, reader) and len(ds) == count and ds.skipped == [] and not ds.warnings
        assert ds.classes == ["__background__", *SYNTH_CLASSES]
        for i in range(count):
            # image i of split s is drawn from default_rng([seed, s, i]) (documented)
            image, boxes, labels = generate_sample(np.random.default_rng([4, split_index, i]), 96)
            target = ds.annotation(i)
            assert torch.equal(target["boxes"], boxes) and torch.equal(target["labels"], labels)
            stored, _ = ds[i]
            # JPEG (quality 90) drops the per-pixel noise; averaged over 4x4 blocks the pictures agree
            error = torch.nn.functional.avg_pool2d((stored.float() - image.float())[None], 4)
            assert error.abs().mean() < 3


def test_overwrite_and_empty_split(tmp_path):
    out = write_dataset(tmp_path / "y", "yolo", num_train=5, num_test=1, size=48, seed=0)
    with pytest.raises(ValueError, match="folder is not empty"):
        write_dataset(out, "yolo", num_train=2, num_test=0, size=48)
    (out / "notes.txt").write_text("kept")
    write_dataset(out, "yolo", num_train=2, num_test=0, size=48, overwrite=True)
    assert len(open_dataset(out, split="train")) == 2  # no stale images from the first run
    assert len(open_dataset(out, split="test")) == 0
    assert (out / "notes.txt").read_text() == "kept"
    with pytest.raises(ValueError, match="unknown dataset format"):
        write_dataset(tmp_path / "z", "kitti", 1, 1)
