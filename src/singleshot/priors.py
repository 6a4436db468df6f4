"""Default boxes ("priors"), the paper's section 2.2 ("Choosing scales and aspect ratios").

Per feature-map level k with an ``f x f`` grid, cell (i, j) has its centre at
``((j + 0.5) * step / image_size, (i + 0.5) * step / image_size)`` and, with
``s = min_size / image_size`` and ``s' = max_size / image_size``, the boxes

    (s, s), (sqrt(s * s'), sqrt(s * s')), then for each ratio r:
    (s * sqrt(r), s / sqrt(r)), (s / sqrt(r), s * sqrt(r))

in that order (Caffe SSD, ssd.pytorch and torchvision agree). Priors are flattened
level -> row -> column -> box, the order of the heads' outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["PriorConfig", "generate_priors", "PRIOR_CLIP_MODES", "count_outside", "level_box_sizes"]

PRIOR_CLIP_MODES = ("center", "size", "none")


@dataclass(frozen=True)
class PriorConfig:
    """Where the default boxes sit and how large they are.

    Attributes:
        image_size: side of the square network input, in pixels.
        feature_maps: grid side of each source level, e.g. (38, 19, 10, 5, 3, 1).
        steps: pixels between neighbouring cell centres at each level.
        min_sizes: pixel size ``s`` of the first square box at each level.
        max_sizes: pixel size ``s'``; the second square box has side ``sqrt(s * s')``.
        aspect_ratios: extra ratios per level; each r > 1 adds two boxes (r and 1/r).
        clip: "center" clamps (cx, cy, w, h) to [0, 1] (ssd.pytorch, lufficc/SSD);
            "size" clamps only (w, h) (torchvision); "none" keeps them as computed (Caffe SSD).
            "center" and "size" differ where a grid spills over the image: SSD300's 10x10
            level has step 32 (320 px > 300), so its last column is centred at 9.5 * 32 / 300
            = 1.013, which "center" moves to 1.0. SSD512's grids fit exactly.
    """

    image_size: int
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    clip: str = "center"

    def __post_init__(self) -> None:
        levels = len(self.feature_maps)
        lengths = {
            "steps": len(self.steps),
            "min_sizes": len(self.min_sizes),
            "max_sizes": len(self.max_sizes),
            "aspect_ratios": len(self.aspect_ratios),
        }
        for name, length in lengths.items():
            if length != levels:
                raise ValueError(f"PriorConfig.{name} has {length} entries for {levels} feature maps")
        if self.clip not in PRIOR_CLIP_MODES:
            raise ValueError(f"prior clip must be one of {PRIOR_CLIP_MODES}, got {self.clip!r}")
        for ratios in self.aspect_ratios:
            if any(r <= 1 for r in ratios):
                raise ValueError(f"aspect ratios must be > 1 (each adds r and 1/r), got {ratios}")

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Number of default boxes per grid cell at each level: 2 + 2 * len(ratios)."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        return sum(f * f * n for f, n in zip(self.feature_maps, self.boxes_per_location))

    def with_clip(self, clip: str | None) -> PriorConfig:
        return self if clip is None else replace(self, clip=clip)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "feature_maps": list(self.feature_maps),
            "steps": list(self.steps),
            "min_sizes": list(self.min_sizes),
            "max_sizes": list(self.max_sizes),
            "aspect_ratios": [list(r) for r in self.aspect_ratios],
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PriorConfig:
        return cls(
            image_size=int(data["image_size"]),
            feature_maps=tuple(int(f) for f in data["feature_maps"]),
            steps=tuple(float(s) for s in data["steps"]),
            min_sizes=tuple(float(s) for s in data["min_sizes"]),
            max_sizes=tuple(float(s) for s in data["max_sizes"]),
            aspect_ratios=tuple(tuple(float(r) for r in ratios) for ratios in data["aspect_ratios"]),
            clip=str(data.get("clip", "center")),
        )


def level_box_sizes(config: PriorConfig, level: int) -> list[tuple[float, float]]:
    """The (w, h) of the default boxes of one grid cell at ``level``, as fractions of the image.

    In the order of the priors at each location: s, sqrt(s s'), then (s sqrt(r), s / sqrt(r)) and
    its transpose per aspect ratio r; Python floats (the priors round them to float32 once).
    """
    s = config.min_sizes[level] / config.image_size
    s_prime = math.sqrt(s * (config.max_sizes[level] / config.image_size))
    sizes = [(s, s), (s_prime, s_prime)]
    for ratio in config.aspect_ratios[level]:
        root = math.sqrt(ratio)
        sizes += [(s * root, s / root), (s / root, s * root)]
    return sizes


def _unclipped(config: PriorConfig) -> Tensor:
    levels = []
    for level, grid in enumerate(config.feature_maps):
        # Computed in float64 and rounded once, as ssd.pytorch (Python floats -> float32).
        cells_per_image = config.image_size / config.steps[level]
        centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / cells_per_image
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row-major: i (y) then j (x)
        sizes = torch.tensor(level_box_sizes(config, level), dtype=torch.float64)  # (A, 2)
        anchors = sizes.shape[0]
        centre = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, anchors, 2)
        size = sizes[None].expand(grid * grid, anchors, 2)
        levels.append(torch.cat((centre, size), dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def generate_priors(config: PriorConfig, clip: str | None = None) -> Tensor:
    """All default boxes of a config.

    Args:
        config: the prior layout.
        clip: overrides ``config.clip`` when given ("center", "size" or "none").

    Returns:
        (P, 4) float32 cxcywh as fractions of the image, ordered level -> row -> column -> box.
    """
    mode = config.clip if clip is None else clip
    if mode not in PRIOR_CLIP_MODES:
        raise ValueError(f"prior clip must be one of {PRIOR_CLIP_MODES}, got {mode!r}")
    priors = _unclipped(config)
    if mode == "center":
        priors = priors.clamp(0.0, 1.0)
    elif mode == "size":
        priors = torch.cat((priors[:, :2], priors[:, 2:].clamp(0.0, 1.0)), dim=1)
    return priors.to(torch.float32)


def count_outside(config: PriorConfig) -> list[int]:
    """Per level, how many unclipped default boxes reach outside the image."""
    priors = _unclipped(config)
    corners = torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), dim=1)
    outside = ((corners < 0) | (corners > 1)).any(dim=1)
    counts, start = [], 0
    for grid, per_cell in zip(config.feature_maps, config.boxes_per_location):
        stop = start + grid * grid * per_cell
        counts.append(int(outside[start:stop].sum()))
        start = stop
    return counts
