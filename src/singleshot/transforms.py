"""Image tensors to model input: the one resize and normalisation every path shares.

Training (`singleshot.data`), evaluation, prediction (`singleshot.inference`) and the
exported runtimes all resize with `resize_bilinear`, so they see identical pixels. This
module depends on torch only, so the data pipeline needs nothing of inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["VGG_MEAN", "preprocess", "resize_bilinear", "std_divisor"]

# The model input convention: RGB on the 0-255 scale minus this per-channel mean (the VGG /
# Caffe SSD / ssd.pytorch value). The one home of the default ``image_mean`` everywhere.
VGG_MEAN: tuple[float, float, float] = (123.0, 117.0, 104.0)


def std_divisor(
    std: Sequence[float] | None, shape: tuple[int, ...], device: torch.device | str | None = None
) -> Tensor | None:
    """``std`` as a float32 tensor of ``shape`` to divide the mean-subtracted input by, or
    None when there is nothing to divide (no ``std``, or all ones: the VGG models' input is
    then computed with exactly the operations it always was)."""
    if std is None or all(float(s) == 1.0 for s in std):
        return None
    if len(std) != 3 or not all(float(s) > 0 for s in std):
        raise ValueError(f"std must be three positive numbers (R, G, B), got {tuple(std)}")
    return torch.tensor([float(s) for s in std], dtype=torch.float32, device=device).view(shape)


def resize_bilinear(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 or float (3, h, w) -> a new contiguous float32 (3, height, width) tensor.

    Bilinear, ``align_corners=False``, no antialiasing (what SSD models are trained with,
    as in ssd.pytorch and torchvision), computed in float32. Training, evaluation and
    prediction all resize with this function, so they see identical pixels, on one thread
    or several (a data loader's workers run on one).

    Each channel is resized as a one-channel image: for a three-channel image PyTorch's
    CPU kernel takes another path on one thread than on several, 4x slower, whose pixels
    differ in the last bits; one-channel images take the same path (the multi-threaded
    one's pixels) on any number of threads.
    """
    if image.shape[-2:] == (height, width):
        return image.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    x = image.to(torch.float32)[:, None]  # (3, 1, h, w)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return x[:, 0]


def preprocess(
    images: Sequence[Tensor],
    size: int,
    mean: Sequence[float],
    device: torch.device | str | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """uint8 (3, H_i, W_i) RGB images -> float (B, 3, size, size) model input.

    `resize_bilinear`, then subtraction of the RGB ``mean`` and division by the RGB
    ``std`` (both on the 0-255 scale; no division when ``std`` is None or all ones).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = std_divisor(std, (1, 3, 1, 1), device)
    batch = [resize_bilinear(image.to(device), size, size) for image in images]
    x = torch.stack(batch) - mean_t
    return x if std_t is None else x.div_(std_t)
