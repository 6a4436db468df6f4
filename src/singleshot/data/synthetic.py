"""A synthetic detection dataset: seeded, fast, no download.

Six object classes differ in both shape and colour (`SYNTH_CLASSES`): a red circle,
a blue square, a green triangle, a yellow cross, a magenta ring and a cyan bar. Each
object gets a random size (its square-root area from 12% to 75% of the image side by
default), aspect jitter, rotation, brightness, tint and shading. Backgrounds are muted
colour fields with texture and clutter (lines, polygons, blobs in desaturated colours,
some of them shaped like the objects), so colour alone or shape alone is not quite enough.
Objects overlap and may reach past the image edge, but every object keeps at least
``min_visible`` (60%) of its area visible; its box is the tight box of its visible pixels,
pixel-aligned (integer continuous coordinates), as VOC and COCO annotate. Some images hold
no object. A few thin lines are drawn over everything, and sensor-like noise is added.

Everything is drawn with numpy and Pillow's ImageDraw, so a 300 px image takes a few
milliseconds. The same seed gives the same pixels, and `write_dataset` the same bytes.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .validation import progress_bar
from .writers import OUTPUTS, make_writer

__all__ = ["SYNTH_CLASSES", "generate_sample", "render_sample", "write_dataset", "SPLITS"]

SYNTH_CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar")
SPLITS = ("train", "test")

# Saturated base colours, far apart in hue: red, blue, green, yellow, magenta, cyan.
_COLOURS = np.array(
    [[215, 40, 40], [45, 80, 225], [40, 180, 65], [240, 205, 40], [200, 55, 210], [40, 200, 215]],
    dtype=np.float32,
)
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 48, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False))], axis=1)  # fmt: skip
_SQUARE = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
_TRIANGLE = np.array([[0, -1], [1, 0.8], [-1, 0.8]], dtype=np.float64)


def _cross(arm: float) -> np.ndarray:
    a = arm
    return np.array(
        [
            [-a, -1],
            [a, -1],
            [a, -a],
            [1, -a],
            [1, a],
            [a, a],
            [a, 1],
            [-a, 1],
            [-a, a],
            [-1, a],
            [-1, -a],
            [-a, -a],
        ],
        dtype=np.float64,
    )


def _outline(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Unit outline (vertices in [-1, 1]^2) of a class, an optional hole, and its aspect ratio w/h."""
    name = SYNTH_CLASSES[label]
    aspect = math.exp(rng.uniform(-0.18, 0.18))
    if name == "circle":
        return _CIRCLE, None, aspect
    if name == "square":
        return _SQUARE, None, aspect
    if name == "triangle":
        return _TRIANGLE, None, aspect
    if name == "cross":
        return _cross(rng.uniform(0.26, 0.38)), None, aspect
    if name == "ring":
        return _CIRCLE, _CIRCLE * rng.uniform(0.45, 0.62), aspect
    ratio = rng.uniform(2.5, 4.0)  # bar: long and thin, lying or standing
    return _SQUARE, None, ratio if rng.random() < 0.5 else 1.0 / ratio


def _place_shape(
    label: int, size: int, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, int, int] | None:
    """Draw one object's full mask. Returns (bool mask (h, w), left x, top y) in image pixels."""
    outline, hole, aspect = _outline(label, rng)
    side = scale * size
    half = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)]) / 2
    max_angle = {"circle": 0.0, "ring": 0.0, "bar": 10.0, "square": 20.0, "cross": 20.0}.get(
        SYNTH_CLASSES[label], 180.0
    )
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (outline * half) @ rotation.T
    extent = points.max(axis=0) - points.min(axis=0)
    # Centre so that at most 15% of the shape's extent reaches past an image edge.
    low, high = 0.35 * extent, size - 0.35 * extent
    if np.any(high <= low):
        return None
    centre = rng.uniform(low, high)
    points = points + centre
    left, top = np.floor(points.min(axis=0)).astype(int)
    right, bottom = np.ceil(points.max(axis=0)).astype(int) + 1
    canvas = Image.new("L", (int(right - left), int(bottom - top)), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in (points - (left, top)).tolist()], fill=255)
    if hole is not None:
        inner = (hole * half) @ rotation.T + centre - (left, top)
        draw.polygon([tuple(p) for p in inner.tolist()], fill=0)
    mask = np.asarray(canvas) > 0
    return (mask, int(left), int(top)) if mask.any() else None


def _crop(mask: np.ndarray, left: int, top: int, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """The part of a mask inside the image: (image slices, mask part)."""
    h, w = mask.shape
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + w, size), min(top + h, size)
    part = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    return (slice(y0, y1), slice(x0, x1)), part


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    grid = int(rng.integers(2, 7))
    grey = rng.uniform(50, 210, (grid, grid, 1))
    field = np.clip(grey + rng.normal(0, 12, (grid, grid, 3)), 0, 255).astype(np.uint8)
    image = np.asarray(
        Image.fromarray(field, "RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    fine = int(rng.integers(12, 33))
    texture = rng.normal(0, rng.uniform(6, 18), (fine, fine)).astype(np.float32)
    texture_image = Image.fromarray(texture, "F").resize((size, size), Image.Resampling.BILINEAR)
    image = image + np.asarray(texture_image)[:, :, None]
    background = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    _clutter(background, size, int(rng.integers(4, 21)), rng)
    return background


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(30, 230)
    red, green, blue = (int(v) for v in np.clip(grey + rng.normal(0, 12, 3), 0, 255))
    return red, green, blue


def _clutter(
    image: Image.Image, size: int, count: int, rng: np.random.Generator, lines_only: bool = False
) -> None:
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        kind = 0 if lines_only else int(rng.integers(0, 4))
        colour = _muted(rng)
        if kind == 0:  # a line
            points = rng.uniform(-0.1, 1.1, (2, 2)) * size
            width = int(rng.integers(1, 3 if lines_only else 5))
            draw.line([tuple(p) for p in points.tolist()], fill=colour, width=width)
        elif kind == 1:  # an irregular polygon
            centre = rng.uniform(0, size, 2)
            radius = rng.uniform(0.03, 0.12) * size * rng.uniform(0.5, 1.0, int(rng.integers(3, 8)))
            angles = np.sort(rng.uniform(0, 2 * np.pi, len(radius)))
            points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radius[:, None]
            draw.polygon([tuple(p) for p in points.tolist()], fill=colour)
        elif kind == 2:  # a blob
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(0.02, 0.09, 2) * size
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:  # a muted object-like shape (square, disc or bar outline)
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.04, 0.14) * size
            box = [x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r]
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, outline=colour, width=2)


_Placed = tuple[int, np.ndarray, int, int, int]  # label, mask, left, top, full area


def _place_objects(
    rng: np.random.Generator, size: int, wanted: int, min_size: float, max_size: float, min_visible: float
) -> tuple[list[_Placed], np.ndarray]:
    """Up to ``wanted`` shapes, each kept only if every shape so far stays ``min_visible``
    visible; returns them (back to front) and ``owner`` (S, S) int16: the index of the shape
    on top at each pixel, -1 for background."""
    owner = np.full((size, size), -1, dtype=np.int16)
    objects: list[_Placed] = []
    attempts = 0
    while len(objects) < wanted and attempts < 10 * max(wanted, 1):
        attempts += 1
        label = int(rng.integers(0, len(SYNTH_CLASSES)))
        low = max(min_size, 0.16) if SYNTH_CLASSES[label] == "bar" else min_size
        scale = math.exp(rng.uniform(math.log(low), math.log(max_size)))
        placed = _place_shape(label, size, scale, rng)
        if placed is None:
            continue
        mask, left, top = placed
        region, part = _crop(mask, left, top, size)
        trial = owner.copy()
        trial[region][part] = len(objects)
        candidate = [*objects, (label, mask, left, top, int(mask.sum()))]
        if all(
            (trial[_crop(m, x, y, size)[0]] == k).sum() >= min_visible * area
            for k, (_, m, x, y, area) in enumerate(candidate)
        ):
            objects, owner = candidate, trial
    return objects, owner


def _paint_objects(
    image: np.ndarray, objects: list[_Placed], owner: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[list, list, list]:
    """Paint the shapes into ``image`` (S, S, 3) float32 in place, shaded; return their boxes
    (x1, y1, x2, y2) of the visible pixels, labels (1-based) and truncation flags."""
    boxes, labels, truncated = [], [], []
    for k, (label, mask, left, top, area) in enumerate(objects):
        region, part = _crop(mask, left, top, size)
        colour = _COLOURS[label] * rng.uniform(0.7, 1.1) + rng.normal(0, 12, 3)
        h, w = mask.shape
        gx, gy = rng.uniform(-0.25, 0.25, 2)
        ys = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None]
        xs = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :]
        shade = 1 + gx * (xs - (left + w / 2)) / w + gy * (ys - (top + h / 2)) / h
        patch = image[region]
        patch[part] = (shade[:, :, None] * colour.astype(np.float32))[part]
        visible = owner[region] == k
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        y0, x0 = region[0].start, region[1].start
        boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
        labels.append(label + 1)
        truncated.append(int(part.sum()) < area)
    return boxes, labels, truncated


def _clutter_and_noise(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Lines over the shapes, a brightness change and pixel noise: float32 (S, S, 3), unclipped."""
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    _clutter(picture, size, int(rng.integers(0, 3)), rng, lines_only=True)
    image = np.asarray(picture, dtype=np.float32) * rng.uniform(0.85, 1.15)
    # Uniform per-pixel noise (std 2-8): a third of the cost of Gaussian noise, looks the same.
    spread = np.float32(rng.uniform(2, 8) * 2 * math.sqrt(3))
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * spread
    return image


def render_sample(
    rng: np.random.Generator,
    size: int,
    max_objects: int = 5,
    min_size: float = 0.12,
    max_size: float = 0.75,
    empty_fraction: float = 0.08,
    min_visible: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image. See `generate_sample`; returns numpy arrays (image uint8 (S, S, 3),
    boxes float32 (n, 4), labels int64 (n,), truncated bool (n,) = reaches past an edge)."""
    background = _background(size, rng)
    wanted = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    objects, owner = _place_objects(rng, size, wanted, min_size, max_size, min_visible)
    image = np.asarray(background, dtype=np.float32).copy()
    boxes, labels, truncated = _paint_objects(image, objects, owner, size, rng)
    image = _clutter_and_noise(image, size, rng)
    return (
        np.clip(np.rint(image), 0, 255).astype(np.uint8),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(truncated, dtype=bool),
    )


def generate_sample(
    rng_or_seed: np.random.Generator | int,
    size: int = 160,
    max_objects: int = 5,
    min_size: float = 0.12,
    max_size: float = 0.75,
    empty_fraction: float = 0.08,
    min_visible: float = 0.6,
) -> tuple[Tensor, Tensor, Tensor]:
    """One synthetic detection image.

    Args:
        rng_or_seed: a numpy Generator (advanced by the call) or an int seed.
        size: the image side S in pixels.
        max_objects: objects wanted per image, drawn uniformly in 1..max_objects (fewer
            when they cannot be placed within the visibility rule).
        min_size, max_size: range of an object's square-root area as a fraction of S
            (drawn log-uniformly; bars start at 0.16 so their short side stays visible).
        empty_fraction: share of images without objects.
        min_visible: least fraction of each object's area left visible (not occluded, not
            past the edge).

    Returns:
        (image uint8 (3, S, S) RGB, boxes float32 (n, 4) xyxy continuous pixels with integer
        values, labels int64 (n,) in 1..len(SYNTH_CLASSES)).
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
    image, boxes, labels, _ = render_sample(
        rng, size, max_objects, min_size, max_size, empty_fraction, min_visible
    )
    channels_first = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(channels_first), torch.from_numpy(boxes), torch.from_numpy(labels)


def write_dataset(
    out: str | os.PathLike,
    format: str = "voc",
    num_train: int = 1000,
    num_test: int = 200,
    size: int = 160,
    seed: int = 0,
    quality: int = 90,
    overwrite: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> Path:
    """Write a synthetic dataset with splits "train" and "test" in a real format.

    Image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``
    (s = 0 for train, 1 for test), so every image is reproducible on its own and the
    same arguments give the same bytes. Files are named ``<split>_<i:06d>``.

    Args:
        out: the output folder (layouts in `singleshot.data.writers`).
        format: "voc", "coco" or "yolo".
        num_train, num_test: images per split.
        size: image side in pixels.
        seed: the dataset seed.
        quality: JPEG quality.
        overwrite: allow a non-empty ``out``, deleting what an earlier run of this format
            wrote there (the folders and files named in the layout); otherwise raise.
        progress: progress bar; None = only for 1000 images or more.
        options: passed to `generate_sample` (max_objects, min_size, ...).

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    if format not in OUTPUTS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {tuple(OUTPUTS)}")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"image counts must be >= 0, got {num_train}, {num_test}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: folder is not empty (use overwrite=True / --overwrite to replace it)")
        for name in OUTPUTS[format]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    generate_sample(0, size, **options)  # validates the options before anything is written
    writer = make_writer(format, out, SYNTH_CLASSES, quality)
    for split in SPLITS:
        writer.declare_split(split)
    jobs = [(s, name, i) for s, (name, n) in enumerate(zip(SPLITS, (num_train, num_test))) for i in range(n)]
    for split_index, split, i in progress_bar(jobs, len(jobs), f"writing {format} to {out.name}", progress):
        rng = np.random.default_rng([seed, split_index, i])
        image, boxes, labels, truncated = render_sample(rng, size, **options)
        writer.add(split, f"{split}_{i:06d}", image, boxes, labels, truncated=truncated)
    writer.close()
    return out
