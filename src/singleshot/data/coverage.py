"""How well a preset's default boxes fit a dataset's objects.

SSD learns an object only through the default boxes (priors) matched to it: those with
IoU >= 0.5, plus its single best prior when none reaches the threshold. An object whose
best prior stays far below 0.5 trains on one poorly fitting box and is often missed, so
the share of objects with a prior at IoU >= 0.5 tells at once whether a prior config
suits the data (small objects are the usual failure).

Boxes are measured as the network sees them: the image is stretched to the square
input, so x is divided by the image width and y by its height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..boxes import cxcywh_to_xyxy, iou
from ..priors import PriorConfig, generate_priors
from .stats import SIZE_EDGES, format_edge
from .validation import progress_bar

__all__ = ["Coverage", "normalised_boxes", "best_prior_iou", "prior_coverage", "format_coverage"]


@dataclass
class Coverage:
    """Per object: best IoU with any prior, that prior's level, number of priors >= threshold.

    Attributes:
        threshold: the matching threshold (0.5 in the paper).
        image_size: the network input side (for sizes in input pixels).
        relative_sizes: float (N,) sqrt(w * h) of the normalised boxes.
        best_iou: float (N,); best_level: int (N,); matches: int (N,).
        num_levels: number of feature-map levels of the config.
    """

    threshold: float
    image_size: int
    relative_sizes: np.ndarray
    best_iou: np.ndarray
    best_level: np.ndarray
    matches: np.ndarray
    num_levels: int

    @property
    def covered(self) -> float:
        """Share of objects whose best prior has IoU >= threshold (1.0 for no objects)."""
        return float((self.best_iou >= self.threshold).mean()) if len(self.best_iou) else 1.0


def normalised_boxes(dataset: Any, progress: bool | None = None) -> torch.Tensor:
    """All boxes of a dataset as float32 (N, 4) xyxy fractions (x / W, y / H)."""
    parts = []
    for index in progress_bar(range(len(dataset)), len(dataset), "reading boxes", progress):
        target = dataset.annotation(index)
        height, width = (float(v) for v in target["size"])
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        parts.append((target["boxes"].double().reshape(-1, 4) / scale).float())
    return torch.cat(parts) if parts else torch.zeros(0, 4)


def best_prior_iou(
    boxes: torch.Tensor, config: PriorConfig, threshold: float = 0.5, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best IoU of each box with the config's priors (corner form, as in matching).

    Args:
        boxes: float (N, 4) xyxy fractions of the image.

    Returns:
        (best IoU float32 (N,), index of that prior int64 (N,), priors with IoU >= threshold int64 (N,)).
    """
    priors = cxcywh_to_xyxy(generate_priors(config))
    best, where, matches = [], [], []
    for start in range(0, len(boxes), chunk):
        overlaps = iou(boxes[start : start + chunk].float(), priors)
        value, index = overlaps.max(dim=1)
        best.append(value)
        where.append(index)
        matches.append((overlaps >= threshold).sum(dim=1))
    if not best:
        empty = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0), empty, empty
    return torch.cat(best), torch.cat(where), torch.cat(matches)


def prior_coverage(
    dataset: Any, config: PriorConfig, threshold: float = 0.5, progress: bool | None = None
) -> Coverage:
    """Match every box of ``dataset`` against the priors of ``config``."""
    boxes = normalised_boxes(dataset, progress)
    best, index, matches = best_prior_iou(boxes, config, threshold)
    per_level = [f * f * n for f, n in zip(config.feature_maps, config.boxes_per_location)]
    level = np.searchsorted(np.cumsum(per_level), index.numpy(), side="right")
    w, h = (boxes[:, 2] - boxes[:, 0]).double(), (boxes[:, 3] - boxes[:, 1]).double()
    return Coverage(
        threshold=threshold,
        image_size=config.image_size,
        relative_sizes=torch.sqrt(w * h).numpy(),
        best_iou=best.numpy(),
        best_level=level,
        matches=matches.numpy(),
        num_levels=len(per_level),
    )


def format_coverage(coverage: Coverage, name: str = "") -> str:
    """Text report: overall share, then by box size and by level of the best prior."""
    n = len(coverage.best_iou)
    t = coverage.threshold
    title = f"default-box coverage{f' of {name}' if name else ''}: {n} boxes"
    if n == 0:
        return f"{title}; nothing to measure"
    hit = coverage.best_iou >= t
    lines = [
        title,
        f"best default box IoU >= {t:g}: {int(hit.sum())} of {n} ({100 * hit.mean():.1f}%); "
        f"mean best IoU {coverage.best_iou.mean():.3f}; "
        f"median default boxes >= {t:g} per object: {int(np.median(coverage.matches))}",
        f"by size, sqrt(w h) as a fraction of the input (and in pixels of the {coverage.image_size} px"
        " input):",
        f"  {'size':>14} {'boxes':>8} {'covered':>8} {'mean IoU':>9}",
    ]
    edges = SIZE_EDGES
    bins = np.digitize(coverage.relative_sizes, edges[1:-1])
    for k in range(len(edges) - 1):
        inside = bins == k
        count = int(inside.sum())
        if count == 0:
            continue
        low, high = edges[k] * coverage.image_size, edges[k + 1] * coverage.image_size
        pixels = f"{low:.0f}-{high:.0f} px" if np.isfinite(high) else f">{low:.0f} px"
        label = f"[{format_edge(edges[k])}, {format_edge(edges[k + 1])})"
        lines.append(
            f"  {label:>14} {count:>8} {100 * hit[inside].mean():7.1f}% "
            f"{coverage.best_iou[inside].mean():9.3f}   {pixels}"
        )
    lines.append("by level of the best default box:")
    for level in range(coverage.num_levels):
        inside = coverage.best_level == level
        if inside.any():
            lines.append(
                f"  level {level}: {int(inside.sum()):>8} boxes, {100 * hit[inside].mean():5.1f}% covered"
            )
    return "\n".join(lines)
