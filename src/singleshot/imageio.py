"""Reading images as what every part of singleshot takes: uint8 (3, H, W) RGB tensors.

Files are decoded with torchvision.io (libjpeg-turbo, libpng) where it can, with
Pillow otherwise; grayscale, CMYK, palette, alpha and 16-bit images all become
8-bit RGB. EXIF orientation is NOT applied: annotations refer to the pixels as
stored, so rotating them would misplace every box.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

__all__ = ["read_image", "to_rgb_tensor", "ImageLike"]

ImageLike = Any  # a uint8 tensor (3, H, W), a PIL image, or a path


def _pil_to_rgb_uint8(image: Image.Image) -> Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- or 32-bit single channel: scale the full range down to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)
        array = np.repeat(array[:, :, None], 3, axis=2)
    else:
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            # Composite on black, the way libpng's RGB mode drops alpha.
            image = image.convert("RGBA")
            array = np.asarray(image, dtype=np.uint8)[:, :, :3].copy()
        else:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _tensor_to_rgb_uint8(image: Tensor, where: str = "image") -> Tensor:
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"{where}: expected an image tensor (C, H, W), got shape {tuple(image.shape)}")
    if image.dtype == torch.uint16 or image.dtype == torch.int32:
        image = (image.to(torch.float32) / 65535.0 * 255.0).round().clamp(0, 255).to(torch.uint8)
    elif image.is_floating_point():
        raise ValueError(f"{where}: expected a uint8 image (0-255), got {image.dtype}")
    elif image.dtype != torch.uint8:
        raise ValueError(f"{where}: unsupported image dtype {image.dtype}")
    channels = image.shape[0]
    if channels == 1:
        image = image.expand(3, -1, -1)
    elif channels == 2:  # gray + alpha
        image = image[:1].expand(3, -1, -1)
    elif channels == 4:  # RGBA
        image = image[:3]
    elif channels != 3:
        raise ValueError(f"{where}: expected 1, 3 or 4 channels, got {channels}")
    return image.contiguous()


def read_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 (3, H, W) RGB.

    Raises:
        ValueError: the file is missing, empty, truncated or not an image; the message
            names the file and the reason.
    """
    path = Path(path)
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error.strerror or error})") from None
    if data.numel() == 0:
        raise ValueError(f"{path}: empty file")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
        return _tensor_to_rgb_uint8(image, str(path))
    except (RuntimeError, ValueError):
        pass  # formats or colour modes torchvision does not decode: try Pillow
    try:
        with Image.open(path) as pil:
            pil.load()
            return _pil_to_rgb_uint8(pil)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


def to_rgb_tensor(image: ImageLike) -> Tensor:
    """A uint8 (3, H, W) RGB tensor from a tensor, a PIL image or a path."""
    if isinstance(image, Tensor):
        return _tensor_to_rgb_uint8(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb_uint8(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    raise TypeError(f"expected a uint8 tensor, a PIL image or a path, got {type(image).__name__}")
