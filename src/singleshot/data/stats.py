"""What a dataset holds: objects per class, difficult/crowd counts, box sizes and shapes.

Computed from ``ds.annotation(i)`` (no image decoding), printed as text by
``singleshot data check``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .validation import progress_bar

__all__ = [
    "DatasetStats",
    "dataset_stats",
    "text_histogram",
    "format_stats",
    "format_edge",
    "SIZE_EDGES",
    "ASPECT_EDGES",
]

# Box size as sqrt(box area / image area): the side of the equivalent square, as a fraction.
SIZE_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, math.inf)
# Aspect ratio width / height, symmetric around 1 on a log scale.
ASPECT_EDGES = (0.0, 1 / 4, 1 / 3, 1 / 2, 1 / 1.5, 1.5, 2.0, 3.0, 4.0, math.inf)
# COCO's area classes, in pixels of the stored image.
COCO_AREAS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))


@dataclass
class DatasetStats:
    """Counts over a dataset (all boxes, difficult/crowd included unless said otherwise).

    Attributes:
        classes: names, index 0 = background.
        num_images: images read; ``empty_images``: those without any object.
        objects: int (C,) objects per label (index 0 unused); ``difficult``: of which difficult.
        relative_sizes: float (N,) sqrt(box area / image area) of every box.
        aspects: float (N,) width / height of every box.
        areas: float (N,) box area in pixels.
        image_sizes: Counter-like dict {(H, W): images}.
    """

    classes: list[str]
    num_images: int = 0
    empty_images: int = 0
    objects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    relative_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    aspects: np.ndarray = field(default_factory=lambda: np.zeros(0))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0))
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)


def dataset_stats(dataset: Any, progress: bool | None = None) -> DatasetStats:
    """Count a dataset's objects and measure its boxes (from ``dataset.annotation(i)``)."""
    classes = list(dataset.classes)
    objects = np.zeros(len(classes), dtype=np.int64)
    difficult = np.zeros(len(classes), dtype=np.int64)
    sizes, aspects, areas = [], [], []
    image_sizes: dict[tuple[int, int], int] = {}
    empty = 0
    for index in progress_bar(range(len(dataset)), len(dataset), "counting", progress):
        target = dataset.annotation(index)
        boxes = target["boxes"].double().numpy().reshape(-1, 4)
        labels = target["labels"].numpy()
        height, width = (int(v) for v in target["size"])
        image_sizes[(height, width)] = image_sizes.get((height, width), 0) + 1
        if len(labels) == 0:
            empty += 1
            continue
        objects += np.bincount(labels, minlength=len(classes))[: len(classes)]
        flags = target.get("difficult")
        if flags is not None and len(flags):
            difficult += np.bincount(labels[flags.numpy()], minlength=len(classes))[: len(classes)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sizes.append(np.sqrt(w * h / (width * height)))
        aspects.append(w / h)
        areas.append(w * h)
    return DatasetStats(
        classes=classes,
        num_images=len(dataset),
        empty_images=empty,
        objects=objects,
        difficult=difficult,
        relative_sizes=np.concatenate(sizes) if sizes else np.zeros(0),
        aspects=np.concatenate(aspects) if aspects else np.zeros(0),
        areas=np.concatenate(areas) if areas else np.zeros(0),
        image_sizes=image_sizes,
    )


def format_edge(value: float, reciprocal: bool = False) -> str:
    """A bin edge as text; with ``reciprocal``, values below 1 are written 1/x (aspect ratios)."""
    if math.isinf(value):
        return "inf"
    if reciprocal and 0 < value < 1:
        return f"1/{1 / value:.3g}"
    return f"{value:.3g}"


def text_histogram(
    values: np.ndarray, edges: Sequence[float], width: int = 40, reciprocal: bool = False
) -> list[str]:
    """One line per bin [edges[k], edges[k+1]): range, count, share and a bar of '#'.

    Values exactly on an edge fall in the bin that starts there; ``reciprocal`` writes
    edges below 1 as 1/x.
    """
    counts = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))[0]
    total = max(int(counts.sum()), 1)
    top = max(int(counts.max()), 1) if len(counts) else 1
    lines = []
    for k, count in enumerate(counts.tolist()):
        label = f"[{format_edge(edges[k], reciprocal)}, {format_edge(edges[k + 1], reciprocal)})"
        bar = "#" * round(width * count / top)
        lines.append(f"  {label:>14} {count:>8} {100 * count / total:5.1f}%  {bar}")
    return lines


def format_stats(stats: DatasetStats, crowd_name: str = "difficult") -> str:
    """The text report: per-class counts, then size, COCO-area and aspect histograms."""
    total = int(stats.objects.sum())
    lines = [
        f"images: {stats.num_images} ({stats.empty_images} without objects), objects: {total} "
        f"({int(stats.difficult.sum())} {crowd_name})",
    ]
    if stats.image_sizes:
        common = sorted(stats.image_sizes.items(), key=lambda item: -item[1])[:3]
        shown = ", ".join(f"{w}x{h} ({n})" for (h, w), n in common)
        lines.append(f"image sizes: {len(stats.image_sizes)} distinct; most common {shown}")
    lines.append(f"{'label':>5}  {'class':<20} {'objects':>8} {crowd_name:>10}")
    for label in range(1, len(stats.classes)):
        lines.append(
            f"{label:>5}  {stats.classes[label]:<20} {int(stats.objects[label]):>8} "
            f"{int(stats.difficult[label]):>10}"
        )
    if total:
        lines.append("box size, sqrt(box area / image area):")
        lines += text_histogram(stats.relative_sizes, SIZE_EDGES)
        areas = ", ".join(
            f"{name} {int(((stats.areas >= low) & (stats.areas < high)).sum())}"
            for name, low, high in COCO_AREAS
        )
        lines.append(f"COCO area classes (pixels of the stored image): {areas}")
        lines.append("aspect ratio, width / height:")
        lines += text_histogram(stats.aspects, ASPECT_EDGES, reciprocal=True)
    return "\n".join(lines)
