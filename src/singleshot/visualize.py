"""Drawing detections on images and saving them."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from .fileio import naming_failed_writes

__all__ = ["class_color", "label_name", "detection_labels", "draw_detections", "save_image", "save_picture"]


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class id (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def label_name(label: int, class_names: Sequence[str] | None) -> str:
    """The class name of ``label`` (index into ``class_names``), else "class <label>"."""
    if class_names is not None and 0 <= label < len(class_names):
        return class_names[label]
    return f"class {label}"


def detection_labels(
    labels: Sequence[int], scores: Sequence[float], class_names: Sequence[str] | None
) -> list[str]:
    """Captions "name 0.87" (or "class 3 0.87" without names) for each detection."""
    return [
        f"{label_name(int(label), class_names)} {float(score):.2f}" for label, score in zip(labels, scores)
    ]


def draw_detections(
    image: Tensor,
    detection: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    width: int = 2,
) -> Tensor:
    """Draw boxes with class names and scores.

    Args:
        image: uint8 (3, H, W) RGB.
        detection: ``boxes`` float (N, 4) xyxy in the image's pixels, ``scores`` (N,),
            ``labels`` int64 (N,) (as returned by `singleshot.SSD.predict`).
        class_names: index = label (0 = background); None captions "class <label>".
        score_threshold: only detections scoring at least this are drawn.
        width: line width in pixels.

    Returns:
        A new uint8 (3, H, W) RGB image; the input is left unchanged.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    boxes = detection["boxes"].detach().cpu().float().reshape(-1, 4)
    scores = detection["scores"].detach().cpu().float().reshape(-1)
    labels = detection["labels"].detach().cpu().reshape(-1)
    keep = scores >= score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if boxes.numel() == 0:
        return image.clone()
    height, width_px = image.shape[-2:]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width_px - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    return draw_bounding_boxes(
        image.cpu(),
        boxes,
        labels=detection_labels(labels.tolist(), scores.tolist(), class_names),
        colors=[class_color(int(label)) for label in labels],
        width=width,
    )


def save_image(image: Tensor, path: str | os.PathLike, quality: int = 90) -> Path:
    """Write a uint8 (3, H, W) RGB image; the format follows the suffix (.jpg, .png, ...).

    Parent folders are created.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{path}: expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    if array.shape[2] == 1:
        array = array[:, :, 0]
    options: dict[str, Any] = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    return save_picture(Image.fromarray(array), path, **options)


def save_picture(picture: Image.Image, path: str | os.PathLike, **options: Any) -> Path:
    """``picture.save(path, **options)``; a failed write (a full disk) raises an OSError
    naming ``path`` and leaves no partial file."""
    path = Path(path)
    with naming_failed_writes(path, remove_partial=True):  # Pillow leaves what it had written
        picture.save(path, **options)
    return path
