"""The paper's geometric augmentation (SSD sections 2.2 and 3.6): expansion ("zoom out"),
the min-IoU random crop, and the resize to the network input (the horizontal flip, a
plain mirror, is done in `singleshot.data.augment`).

Coordinates: boxes are xyxy in continuous pixels (the top-left pixel covers [0, 1) x
[0, 1)). The expanded image ("canvas") has the original image pasted at integer offsets
(left, top); crops are integer rectangles (x0, y0, x1, y1) of the canvas, as in ssd.pytorch.

The min-IoU crop follows the paper and Caffe SSD: an option is drawn from "whole image",
minimum IoU 0.1, 0.3, 0.5, 0.7, 0.9, or "no constraint"; a patch of width and height
each in [0.3, 1] of the canvas (Caffe's and the ports' range; the paper's text says
[0.1, 1]) with height / width in [0.5, 2] is drawn up to 50 times until one holds at
least one object centre and, among the objects whose centre it holds, one with IoU >=
the minimum; so the constraint holds for the objects that are kept (Caffe tests all
objects, including ones the crop then drops). If all trials fail, another option is
drawn. ssd.pytorch's version never applies the IoU test (``overlap.min() < min_iou and
max_iou < overlap.max()`` with ``max_iou = inf`` is always false) and lacks 0.5.
torchvision's ``RandomIoUCrop`` applies the same rule as ours, but with 40 trials, one
torch call per trial and torch's global random state; ours takes a ``torch.Generator``
and checks the trials of two option draws at once in numpy (the first success wins, as
in a sequential loop).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..transforms import resize_bilinear

__all__ = [
    "CROP_OPTIONS",
    "MIN_CROP_SCALE",
    "MAX_CROP_ASPECT",
    "MAX_CROP_TRIALS",
    "MAX_EXPAND_RATIO",
    "Expansion",
    "Crop",
    "resize_bilinear",  # re-exported from singleshot.transforms
    "sample_expansion",
    "sample_crop",
    "visible_region",
]

# None = the whole (expanded) image; a number = minimum IoU (0.0 = a random patch with
# no IoU constraint, still holding at least one object centre).
CROP_OPTIONS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
MIN_CROP_SCALE = 0.3
MAX_CROP_ASPECT = 2.0
MAX_CROP_TRIALS = 50
MAX_EXPAND_RATIO = 4.0
# Draws of an option after which the whole image is taken (each draw picks "whole
# image" with probability 1/7, so this bound is never reached in practice).
MAX_OPTION_DRAWS = 96
OPTION_DRAWS_AT_ONCE = 2


class Expansion(NamedTuple):
    """The image placed at (left, top) on a canvas of (width, height) pixels, ints."""

    width: int
    height: int
    left: int
    top: int


def sample_expansion(
    image_width: int, image_height: int, u: list[float], probability: float = 0.5
) -> Expansion:
    """The paper's "zoom out", from 4 uniform numbers in [0, 1).

    With ``probability``, a canvas ``int(side * ratio)`` with ratio uniform in
    [1, ``MAX_EXPAND_RATIO``] and the image at a uniform integer offset (ssd.pytorch's
    ``Expand``); otherwise the image itself.
    """
    if u[0] >= probability:
        return Expansion(image_width, image_height, 0, 0)
    ratio = 1.0 + (MAX_EXPAND_RATIO - 1.0) * u[1]
    width, height = int(image_width * ratio), int(image_height * ratio)
    return Expansion(width, height, int(u[2] * (width - image_width)), int(u[3] * (height - image_height)))


class Crop(NamedTuple):
    """A chosen crop of the canvas.

    Attributes:
        option: the option that produced it (an entry of ``CROP_OPTIONS``).
        rect: (x0, y0, x1, y1) ints, canvas pixels.
        keep: bool (n,), the objects kept (centre strictly inside ``rect``, non-empty box).
    """

    option: float | None
    rect: tuple[int, int, int, int]
    keep: Tensor


def _centres_inside(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """boxes (n, 4) xyxy, rects (T, 4) xyxy -> (T, n) bool: centre strictly inside."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    inside_x = (rects[:, 0, None] < cx) & (cx < rects[:, 2, None])
    return inside_x & (rects[:, 1, None] < cy) & (cy < rects[:, 3, None])


def _iou(rects: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """rects (T, 4) x boxes (n, 4) xyxy -> (T, n) IoU, float64.

    `singleshot.boxes.iou`'s expression, kept here in numpy because the crop's geometry is a
    few small float64 arrays per sample (see `sample_crop`): the torch calls of ``boxes.iou``
    would cost several times the per-call overhead on this hot path of the data loader.
    """
    w = np.minimum(rects[:, 2, None], boxes[:, 2]) - np.maximum(rects[:, 0, None], boxes[:, 0])
    h = np.minimum(rects[:, 3, None], boxes[:, 3]) - np.maximum(rects[:, 1, None], boxes[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_r = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_r[:, None] + area_b - inter)


def sample_crop(
    boxes: Tensor,
    width: int,
    height: int,
    generator: torch.Generator | None = None,
    options: tuple[float | None, ...] = CROP_OPTIONS,
    max_trials: int = MAX_CROP_TRIALS,
) -> Crop:
    """The min-IoU random crop (see the module docstring).

    Args:
        boxes: float (n, 4) xyxy canvas pixels, inside the canvas; n may be 0, and then
            any patch of the right scale and aspect is accepted. Empty boxes (zero width
            or height) never count and are never kept.
        width, height: canvas size in pixels.
        generator: source of randomness (None = torch's global generator).

    Returns:
        A `Crop`; for a numeric option, the kept objects include one whose IoU with
        ``rect`` (float64) is at least that option.
    """
    # The geometry is a few small arrays: numpy does it with a tenth of torch's per-call
    # overhead. The random numbers still come from the torch generator. Several option
    # draws (each with all its trials) are evaluated at once; taking the first draw that
    # succeeds is the sequential "draw an option, try it, draw again" loop.
    b = boxes.detach().to(torch.float64).cpu().numpy().reshape(-1, 4)
    usable = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    levels = np.array([-1.0 if option is None else option for option in options])
    for _ in range(MAX_OPTION_DRAWS // OPTION_DRAWS_AT_ONCE):
        u = torch.rand(
            OPTION_DRAWS_AT_ONCE, 1 + 4 * max_trials, generator=generator, dtype=torch.float64
        ).numpy()
        choices = np.minimum((u[:, 0] * len(options)).astype(np.int64), len(options) - 1)
        trials = u[:, 1:].reshape(-1, 4)  # draw a's trials are rows a * max_trials + [0, max_trials)
        w = width * (MIN_CROP_SCALE + (1.0 - MIN_CROP_SCALE) * trials[:, 0])
        h = height * (MIN_CROP_SCALE + (1.0 - MIN_CROP_SCALE) * trials[:, 1])
        left = trials[:, 2] * (width - w)
        top = trials[:, 3] * (height - h)
        rects = np.floor(np.stack((left, top, left + w, top + h), axis=1))
        aspect = h / w
        ok = (aspect >= 1.0 / MAX_CROP_ASPECT) & (aspect <= MAX_CROP_ASPECT)
        ok &= (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
        inside = _centres_inside(b, rects) & usable
        if len(b):
            ok &= inside.any(axis=1)
            minimum = np.repeat(levels[choices], max_trials)
            if (minimum > 0).any():
                overlap = np.where(inside, _iou(rects, b), -1.0)
                ok &= overlap.max(axis=1) >= minimum
        ok = ok.reshape(OPTION_DRAWS_AT_ONCE, max_trials)
        for a, choice in enumerate(choices.tolist()):
            if options[choice] is None:
                return Crop(None, (0, 0, width, height), torch.from_numpy(usable))
            if ok[a].any():
                t = a * max_trials + int(np.argmax(ok[a]))
                rect = tuple(int(v) for v in rects[t])
                return Crop(options[choice], rect, torch.from_numpy(inside[t].copy()))  # type: ignore[arg-type]
    return Crop(None, (0, 0, width, height), torch.from_numpy(usable))


def visible_region(
    image_width: int, image_height: int, expansion: Expansion, rect: tuple[int, int, int, int], size: int
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
    """Where the image's pixels land in the ``size`` x ``size`` output of a crop of the canvas.

    Returns:
        ``(source, destination)``: ``source`` = (x0, y0, x1, y1) pixels of the original
        image inside ``rect``, ``destination`` = (x0, y0, x1, y1) output pixels they are
        resized to (the crop's scale, edges rounded to whole pixels); None where the crop
        holds only canvas fill.
    """
    cx0, cy0, cx1, cy1 = rect
    ix0, iy0 = max(cx0, expansion.left), max(cy0, expansion.top)
    ix1, iy1 = min(cx1, expansion.left + image_width), min(cy1, expansion.top + image_height)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    sx, sy = size / (cx1 - cx0), size / (cy1 - cy0)
    dx0, dx1 = round((ix0 - cx0) * sx), round((ix1 - cx0) * sx)
    dy0, dy1 = round((iy0 - cy0) * sy), round((iy1 - cy0) * sy)
    if dx1 <= dx0 or dy1 <= dy0:
        return None
    source = (ix0 - expansion.left, iy0 - expansion.top, ix1 - expansion.left, iy1 - expansion.top)
    return source, (dx0, dy0, dx1, dy1)
