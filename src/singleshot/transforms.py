"""Image tensors to model input: the one resize and mean subtraction every path shares.

Training (`singleshot.data`), evaluation, prediction (`singleshot.inference`) and the
exported runtimes all resize with `resize_bilinear`, so they see identical pixels. This
module depends on torch only, so the data pipeline needs nothing of inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["VGG_MEAN", "preprocess", "resize_bilinear"]

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
