"""Reading images as what every part of singleshot takes: uint8 (3, H, W) RGB tensors.

JPEG files (and 16-bit colour PNGs, which Pillow cuts to 8 bits) are decoded with
torchvision.io (libjpeg-turbo, libpng) where it can, everything else (and the colour
modes torchvision rejects) with Pillow. torchvision's PNG decoder crashed the process
(segmentation fault) on a PNG with a damaged zlib stream, so a PNG goes to it only after
Pillow has decoded it without error.
Every source becomes 8-bit RGB:

- grayscale (L, 1-bit, 16-bit) is repeated over the three channels;
- CMYK JPEGs are converted to RGB (torchvision and Pillow agree on Adobe CMYK);
- palette images are expanded to their colours;
- alpha is dropped, keeping the stored colour under it (what torchvision's RGB mode does);
- 16-bit samples are scaled as round(v * 255 / 65535).

EXIF orientation is NOT applied: annotations (VOC, COCO, YOLO) refer to the pixels as
stored, so rotating the image would misplace every box. `image_size` reports that stored
size without decoding the pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

__all__ = ["IMAGE_SUFFIXES", "read_image", "to_rgb_tensor", "image_size", "ImageLike"]

ImageLike = Any  # a uint8 tensor (3, H, W), a PIL image, or a path

# File suffixes (lower case) taken for images when a folder is listed or an image file is
# looked for: formats `read_image` decodes (Pillow for those torchvision does not). In order
# of preference, most common first.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)

_JPEG_START = b"\xff\xd8\xff"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _pil_to_rgb_uint8(image: Image.Image) -> Tensor:
    array: np.ndarray
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit, 32-bit integer or float single channel: scale the range down to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        else:
            top = max(float(np.nanmax(array)) if array.size else 1.0, 1.0)
        array = np.clip(np.rint(np.nan_to_num(array) / top * 255.0), 0, 255).astype(np.uint8)
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Drop alpha, keeping the colour stored under it (as torchvision's RGB mode does).
        array = np.asarray(image.convert("RGBA"), dtype=np.uint8)[:, :, :3].copy()
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


def _refuse_bombs(content: bytes, path: Path) -> None:
    """Raise ValueError when the header claims more pixels than Pillow's decompression-bomb limit
    (2 x ``Image.MAX_IMAGE_PIXELS``): torchvision would allocate the whole image before decoding
    a byte of it (a 4 KB PNG claiming 60000 x 60000 pixels crashed the process). Reads the
    header from ``content``, the file's bytes already in memory."""
    try:
        with Image.open(io.BytesIO(content)) as pil:
            pil.size  # noqa: B018 (opening reads the header and applies the limit)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: refused to decode ({error})") from None
    except (OSError, SyntaxError, ValueError):
        pass  # not a header Pillow reads: the decoders below say what is wrong


def _for_torchvision(content: bytes, path: Path) -> bool:
    """Whether torchvision decodes this file: JPEG, and 16-bit RGB(A) PNG once Pillow read it whole."""
    if content.startswith(_JPEG_START):
        return True
    if not (
        content.startswith(_PNG_START) and len(content) > 25 and content[24] == 16 and content[25] in (2, 6)
    ):
        return False
    try:
        with Image.open(path) as pil:
            pil.load()
    except _PIL_ERRORS as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    return True


def read_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file to uint8 (3, H, W) RGB, in stored pixel order (no EXIF rotation).

    Raises:
        ValueError: the file is missing, empty, truncated or not an image, or its header
            claims more than twice Pillow's ``Image.MAX_IMAGE_PIXELS`` (a decompression
            bomb); the message names the file and the reason.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error.strerror or error})") from None
    if not content:
        raise ValueError(f"{path}: empty file")
    _refuse_bombs(content, path)
    if _for_torchvision(content, path):
        data = torch.frombuffer(bytearray(content), dtype=torch.uint8)
        try:
            image = decode_image(data, mode=ImageReadMode.RGB)
            return _tensor_to_rgb_uint8(image, str(path))
        except (RuntimeError, ValueError):
            pass  # colour modes torchvision does not decode, or a damaged file: Pillow says which
    try:
        with Image.open(path) as pil:
            pil.load()
            return _pil_to_rgb_uint8(pil)
    except _PIL_ERRORS as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as stored, read from its header (no decoding).

    Raises:
        ValueError: the file is missing or its header is not an image's; names the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as pil:
            width, height = pil.size
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found") from None
    except _PIL_ERRORS as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    return int(height), int(width)


def to_rgb_tensor(image: ImageLike) -> Tensor:
    """A uint8 (3, H, W) RGB tensor from a tensor, a PIL image or a path."""
    if isinstance(image, Tensor):
        return _tensor_to_rgb_uint8(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb_uint8(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    raise TypeError(f"expected a uint8 tensor, a PIL image or a path, got {type(image).__name__}")
