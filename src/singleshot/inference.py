"""`SSD.predict`: images of any size in, detections in the original pixels out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import fractions_to_pixels
from .imageio import ImageLike, to_rgb_tensor
from .postprocess import detect

__all__ = ["VGG_MEAN", "predict", "preprocess", "resize_bilinear"]

# The model input convention: RGB on the 0-255 scale minus this per-channel mean (the VGG /
# Caffe SSD / ssd.pytorch value). The one home of the default ``image_mean`` everywhere.
VGG_MEAN: tuple[float, float, float] = (123.0, 117.0, 104.0)


def resize_bilinear(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 or float (3, h, w) -> a new contiguous float32 (3, height, width) tensor.

    Bilinear, ``align_corners=False``, no antialiasing (what SSD models are trained with,
    as in ssd.pytorch and torchvision), computed in float32. Training, evaluation and
    prediction all resize with this function, so they see identical pixels.
    """
    if image.shape[-2:] == (height, width):
        return image.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    x = image.to(torch.float32)[None]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return x[0].contiguous()


def preprocess(images: Sequence[Tensor], size: int, mean: Sequence[float], device=None) -> Tensor:
    """uint8 (3, H_i, W_i) RGB images -> float (B, 3, size, size) model input.

    `resize_bilinear`, then subtraction of the RGB ``mean`` (0-255 scale).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    batch = [resize_bilinear(image.to(device), size, size) for image in images]
    return torch.stack(batch) - mean_t


def predict(
    model,
    images: ImageLike | Sequence[ImageLike],
    score_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    pre_nms_top_k: int = 200,
    max_detections: int | None = 200,
) -> list[dict[str, Tensor]]:
    """See `singleshot.SSD.predict`."""
    if isinstance(images, (list, tuple)):
        tensors = [to_rgb_tensor(image) for image in images]
    else:
        tensors = [to_rgb_tensor(images)]
    if not tensors:
        return []
    parameter = next(model.parameters())
    x = preprocess(tensors, model.image_size, model.image_mean, device=parameter.device)
    if parameter.dtype != torch.float32:
        x = x.to(parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            loc, conf = model(x)
            scores = torch.softmax(conf.float(), dim=-1)
            detections = detect(
                loc.float(),
                scores,
                model.priors.float(),
                score_threshold=score_threshold,
                nms_threshold=nms_threshold,
                pre_nms_top_k=pre_nms_top_k,
                max_detections=max_detections,
            )
    finally:
        model.train(was_training)
    results = []
    for det, image in zip(detections, tensors):
        height, width = image.shape[-2:]
        boxes = fractions_to_pixels(det["boxes"], height, width)
        results.append({"boxes": boxes.cpu(), "scores": det["scores"].cpu(), "labels": det["labels"].cpu()})
    return results
