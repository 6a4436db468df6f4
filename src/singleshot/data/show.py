"""A picture of dataset samples with their boxes: what the network is shown."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..transforms import VGG_MEAN, std_divisor

__all__ = ["class_colour", "draw_boxes", "input_to_image", "sample_grid"]


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct bright colour per label (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    difficult: Tensor | None = None,
    scale: float = 1.0,
) -> Image.Image:
    """Draw labelled boxes on an image.

    Args:
        image: uint8 (3, H, W) RGB.
        boxes: (n, 4) xyxy pixels of ``image`` (before ``scale``).
        labels: (n,) int64 indices into ``classes`` (index 0 = background).
        difficult: optional (n,) bool; difficult boxes are drawn dashed-thin.
        scale: resize factor applied to the picture (and the boxes) before drawing.

    Returns:
        An RGB PIL image.
    """
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    if scale != 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    flags = difficult.tolist() if difficult is not None else [False] * len(labels)
    for box, label, hard in zip((boxes.double() * scale).tolist(), labels.tolist(), flags):
        colour = class_colour(int(label))
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=1 if hard else 2)
        name = classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))
        text = f"{name}{' (difficult)' if hard else ''}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        top_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, top_y, x1 + (right - left) + 3, top_y + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 2, top_y - (top - y1)), text, fill=(0, 0, 0), font=font)
    return picture


def input_to_image(x: Tensor, mean: Sequence[float], std: Sequence[float] | None = None) -> Tensor:
    """A network input back to a picture: float (3, S, S) (RGB - mean) / std -> uint8 (3, S, S)."""
    restored = x.detach().float().cpu()
    std_t = std_divisor(std, (3, 1, 1))
    if std_t is not None:
        restored = restored * std_t
    restored = restored + torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    return restored.round().clamp(0, 255).to(torch.uint8)


def sample_grid(
    dataset: Any,
    indices: Sequence[int],
    augment: Any | None = None,
    mean: Sequence[float] = VGG_MEAN,
    columns: int | None = None,
    cell: int = 256,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """A grid of samples with their boxes and class names.

    Args:
        dataset: a detection dataset (``ds[i]`` -> uint8 image, target with xyxy pixel boxes).
        indices: which samples.
        augment: None to show the images as stored, or a transform ``augment(image,
            target) -> (x float (3, S, S) minus ``mean``, target with boxes as fractions)``
            (e.g. `singleshot.data.SSDAugmentation`) to show what the network sees.
        mean: the mean ``augment`` subtracts.
        std: the divisor ``augment`` applies after the mean (None: none).
        columns: grid columns (None = about square).
        cell: side of each grid cell in pixels; samples are scaled to fit, keeping aspect.
    """
    if not indices:
        raise ValueError("no samples to show")
    columns = columns or math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / columns)
    grid = Image.new("RGB", (columns * cell, rows * cell), (32, 32, 32))
    for k, index in enumerate(indices):
        image, target = dataset[index]
        boxes = target["boxes"].reshape(-1, 4)
        if augment is not None:
            x, target = augment(image, target)
            image = input_to_image(x, mean, std)
            side = torch.tensor([image.shape[2], image.shape[1]] * 2, dtype=torch.float32)
            boxes = target["boxes"].reshape(-1, 4).float() * side
        scale = cell / max(image.shape[1], image.shape[2])
        tile = draw_boxes(image, boxes, target["labels"], dataset.classes, target.get("difficult"), scale)
        left, top = (k % columns) * cell, (k // columns) * cell
        grid.paste(tile, (left + (cell - tile.width) // 2, top + (cell - tile.height) // 2))
    return grid
