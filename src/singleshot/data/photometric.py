"""The paper's photometric distortion (SSD section 3.6, "Data augmentation"), as in Caffe SSD.

The original Caffe data layer (``distort_param``) applies, each with probability 0.5:

- brightness: add a delta drawn from [-32, 32] to every channel;
- contrast: multiply every channel by a factor drawn from [0.5, 1.5];
- saturation: multiply the HSV saturation by a factor drawn from [0.5, 1.5];
- hue: rotate the HSV hue by an angle drawn from [-18, 18] degrees;

in the order brightness, contrast, saturation, hue, or (with probability 0.5)
brightness, saturation, hue, contrast. Like Caffe's uint8 images, values saturate to
[0, 255] after each operation. ssd.pytorch's extra "lighting noise" (random channel
swap) is not part of the paper's configuration (Caffe's ``random_order_prob`` is 0) and
is left out.

These are not torchvision's ``RandomPhotometricDistort`` operations: there brightness is
a multiplicative factor, contrast blends with the image's mean grey and saturation
blends with the luma (not HSV), so the functions here are our own. Hue and saturation
are computed exactly in HSV without converting whole images to HSV and back:

- scaling the saturation S by ``f`` at fixed hue and value V moves every channel
  towards V: ``c' = V - k (V - c)`` with ``k = min(f, V / (V - min))`` (the second
  term is where S reaches 1 and saturates);
- a hue rotation keeps V and the chroma ``C = V - min`` and re-reads the channels off
  the hexcone: ``c_n = V - C' clamp(min(k, 4 - k), 0, 1)``, ``k = (n + H / 60) mod 6``
  with n = 5, 3, 1 for R, G, B.

All functions take float32 images (3, H, W) on the 0-255 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BRIGHTNESS_DELTA",
    "CONTRAST_RANGE",
    "SATURATION_RANGE",
    "HUE_DELTA",
    "PhotometricParams",
    "NUM_PHOTOMETRIC_DRAWS",
    "sample_photometric",
    "adjust_brightness_",
    "adjust_contrast_",
    "adjust_saturation_hue",
    "apply_photometric",
]

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
# Degrees, as in ssd.pytorch and torchvision (0.05 of a turn). Caffe SSD added its delta
# of 18 to OpenCV's 8-bit hue, whose unit is 2 degrees, so its rotations reach 36 degrees.
HUE_DELTA = 18.0
PROBABILITY = 0.5

# Uniform numbers in [0, 1) that `sample_photometric` consumes.
NUM_PHOTOMETRIC_DRAWS = 9


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the distortion; ``None`` = that operation is skipped.

    Attributes:
        brightness: additive delta on the 0-255 scale.
        contrast: multiplicative factor.
        saturation: factor on the HSV saturation.
        hue: rotation of the HSV hue in degrees.
        contrast_first: contrast before the HSV operations (True) or after them.
    """

    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    contrast_first: bool = True

    @property
    def identity(self) -> bool:
        return all(v is None for v in (self.brightness, self.contrast, self.saturation, self.hue))


def _between(u: float, bounds: tuple[float, float]) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def sample_photometric(u: list[float]) -> PhotometricParams:
    """Parameters from ``NUM_PHOTOMETRIC_DRAWS`` uniform numbers in [0, 1)."""
    if len(u) != NUM_PHOTOMETRIC_DRAWS:
        raise ValueError(f"expected {NUM_PHOTOMETRIC_DRAWS} uniform numbers, got {len(u)}")
    return PhotometricParams(
        brightness=(2 * u[1] - 1) * BRIGHTNESS_DELTA if u[0] < PROBABILITY else None,
        contrast_first=u[2] < 0.5,
        contrast=_between(u[4], CONTRAST_RANGE) if u[3] < PROBABILITY else None,
        saturation=_between(u[6], SATURATION_RANGE) if u[5] < PROBABILITY else None,
        hue=(2 * u[8] - 1) * HUE_DELTA if u[7] < PROBABILITY else None,
    )


def adjust_brightness_(image: Tensor, delta: float) -> Tensor:
    """In place: ``image + delta`` saturated to [0, 255]. float (3, H, W)."""
    return image.add_(delta).clamp_(0.0, 255.0)


def adjust_contrast_(image: Tensor, factor: float) -> Tensor:
    """In place: ``image * factor`` saturated to [0, 255] (Caffe's ``convertTo(alpha)``). float (3, H, W)."""
    return image.mul_(factor).clamp_(0.0, 255.0)


def adjust_saturation_hue(
    image: Tensor, saturation: float = 1.0, hue: float = 0.0, out: Tensor | None = None
) -> Tensor:
    """Scale the HSV saturation by ``saturation`` (clipped at 1) and rotate the hue by ``hue`` degrees.

    Exact HSV arithmetic (see the module docstring), the same result as converting each
    pixel to HSV, changing S and H, and converting back.

    Args:
        image: float (3, H, W) RGB on the 0-255 scale (values in [0, 255]).
        out: where to write the result; may be ``image`` itself (in place).

    Returns:
        float (3, H, W): ``out``, or a new tensor.
    """
    # Only arithmetic, min/max and float-valued comparisons: on CPU, torch.where and
    # torch.remainder run several times slower than these elementwise ops.
    if out is None:
        out = torch.empty_like(image)
    r, g, b = image.unbind(0)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    safe = chroma.clamp(min=1e-6)
    if hue == 0.0:
        # c' = V - k (V - c), k = min(f, V / C): S saturates at 1 where f C > V. Grey
        # pixels (C = 0) have V - c = 0, so any finite k leaves them unchanged.
        k = torch.div(value, safe).clamp_(max=saturation)
        for channel in range(3):
            moved = torch.sub(value, image[channel]).mul_(k)
            torch.sub(value, moved, out=out[channel])
        return out
    inverse = safe.reciprocal()
    # Hue in sextants [0, 6): the formula depends on which channel is the maximum;
    # is_r / is_g are 0/1 floats (R wins ties with G and B, G wins ties with B).
    is_r = torch.ge(r, value, out=torch.empty_like(value))
    is_g = torch.ge(g, value, out=torch.empty_like(value))
    is_g.addcmul_(is_g, is_r, value=-1.0)
    h_b = torch.sub(r, g).mul_(inverse).add_(4.0)
    h_r = torch.sub(g, b).mul_(inverse).sub_(h_b)
    h_g = torch.sub(b, r).mul_(inverse).add_(2.0).sub_(h_b)
    h = h_b.addcmul_(is_r, h_r).addcmul_(is_g, h_g)
    if saturation != 1.0:
        chroma = torch.minimum(chroma.mul_(saturation), value)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.add(h, n + hue / 60.0)
        k.sub_(torch.div(k, 6.0).floor_().mul_(6.0))  # k mod 6, in [0, 6)
        # clamp(min(k, 4 - k), 0, 1) on [0, 6) equals clamp(2 - |k - 2|, 0, 1)
        weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
        torch.sub(value, weight.mul_(chroma), out=out[channel])
    return out


def apply_photometric(image: Tensor, params: PhotometricParams) -> Tensor:
    """The distortion ``params``, in place, on a float (3, H, W) 0-255 RGB image (or view).

    Returns ``image``.
    """
    if params.brightness is not None:
        image = adjust_brightness_(image, params.brightness)
    if params.contrast is not None and params.contrast_first:
        image = adjust_contrast_(image, params.contrast)
    if params.saturation is not None or params.hue is not None:
        image = adjust_saturation_hue(
            image,
            saturation=1.0 if params.saturation is None else params.saturation,
            hue=0.0 if params.hue is None else params.hue,
            out=image,
        )
    if params.contrast is not None and not params.contrast_first:
        image = adjust_contrast_(image, params.contrast)
    return image
