"""Training and evaluation transforms: the paper's augmentation pipeline (SSD sections 2.2
and 3.6) and the plain resize + normalise used for evaluation.

Both map ``(image, target)`` to ``(x, target)``:

- ``image``: uint8 (3, H, W) RGB;
- ``target``: ``"boxes"`` float (n, 4) xyxy pixels (a plain tensor or a torchvision
  ``tv_tensors.BoundingBoxes`` in any format), ``"labels"`` int64 (n,), ``"difficult"``
  bool (n,), and any other keys;
- ``x``: float32 (3, S, S), RGB on the 0-255 scale minus ``mean`` (the model input);
- the returned target: ``"boxes"`` float32 (n', 4) xyxy as fractions of ``x`` in [0, 1];
  ``"labels"``, ``"difficult"`` and the other per-object keys in ``PER_OBJECT_KEYS``
  filtered in step with the boxes; every other key passed through untouched.

Order of operations. The paper (and Caffe SSD, ssd.pytorch) distorts colours on the full
image, then expands it onto a canvas filled with the mean, crops, flips and resizes. Here
the random choices are drawn in that order, but the pixels are computed in a cheaper,
equivalent order: only the part of the original image that ends up in the crop is
resized, straight to where it lands in the output; the colour distortion then runs on
those (at most S x S) pixels only, and the rest of the output is the mean fill, which is
never distorted, as in the paper. This never builds the expanded canvas (up to 16x the
image's area). Colour operations act on each pixel alone, so they commute with cropping
and flipping exactly and with bilinear resizing up to interpolation (brightness and
contrast exactly, apart from saturation at 0 and 255; HSV changes to within rounding of
neighbouring pixels). The only other difference is the one-pixel seam where image and
fill meet, which the paper's order blends by interpolation and this one rounds to whole
output pixels.

torchvision's v2 transforms are not used for these steps: their random transforms draw
from torch's global random state (no ``torch.Generator``), their photometric operations
are not the paper's (see `singleshot.data.photometric`), and composing ``RandomZoomOut``
and ``RandomIoUCrop`` materialises the expanded canvas. ``tv_tensors.BoundingBoxes``
inputs are accepted and converted to xyxy with torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..transforms import VGG_MEAN, preprocess, std_divisor
from .geometric import (
    Crop,
    Expansion,
    resize_bilinear,
    sample_crop,
    sample_expansion,
    visible_region,
)
from .photometric import NUM_PHOTOMETRIC_DRAWS, PhotometricParams, apply_photometric, sample_photometric

__all__ = [
    "SSDAugmentation",
    "EvalTransform",
    "AugmentPlan",
    "PER_OBJECT_KEYS",
    "render",
    "transform_boxes",
]

# Target keys holding one entry per object: filtered together with "boxes".
PER_OBJECT_KEYS = ("labels", "difficult", "truncated", "iscrowd")

EXPAND_PROBABILITY = 0.5
FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class AugmentPlan:
    """Every random choice of one augmentation, in the paper's order.

    Attributes:
        photometric: the colour distortion.
        expansion: the canvas and where the image sits on it.
        crop: the chosen crop of the canvas and the objects it keeps.
        flip: mirror left-right.
    """

    photometric: PhotometricParams
    expansion: Expansion
    crop: Crop
    flip: bool


def _describe(target: dict[str, Any]) -> str:
    image_id = target.get("image_id") if isinstance(target, dict) else None
    return "image" if image_id is None else f"image {image_id!r}"


def _check_image(image: Any, where: str) -> None:
    if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{where}: expected a uint8 RGB image tensor (3, H, W), got {got}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"{where}: empty image of shape {tuple(image.shape)}")


def _read_boxes(target: dict[str, Any], where: str) -> Tensor:
    """target["boxes"] as a plain float32 (n, 4) xyxy tensor, per-object keys checked."""
    if not isinstance(target, dict) or "boxes" not in target:
        raise ValueError(f"{where}: the target must be a dict with a 'boxes' entry")
    boxes = target["boxes"]
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        boxes = boxes.as_subclass(Tensor)
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{where}: 'boxes' must be a tensor (n, 4), got {type(boxes).__name__}")
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: 'boxes' must have shape (n, 4), got {tuple(boxes.shape)}")
    boxes = boxes.to(torch.float32)
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{where}: 'boxes' holds non-finite coordinates")
    for key in PER_OBJECT_KEYS:
        value = target.get(key)
        if isinstance(value, Tensor) and len(value) != len(boxes):
            raise ValueError(f"{where}: '{key}' has {len(value)} entries for {len(boxes)} boxes")
    return boxes


def _clip_to_image(boxes: Tensor, width: int, height: int) -> Tensor:
    return torch.stack(
        (
            boxes[:, 0].clamp(0, width),
            boxes[:, 1].clamp(0, height),
            boxes[:, 2].clamp(0, width),
            boxes[:, 3].clamp(0, height),
        ),
        dim=1,
    )


def _with_objects(target: dict[str, Any], boxes: Tensor, keep: Tensor | None) -> dict[str, Any]:
    """A new target dict: ``boxes`` and the per-object keys filtered by ``keep``."""
    out = dict(target)
    out["boxes"] = boxes
    if keep is not None:
        for key in PER_OBJECT_KEYS:
            value = target.get(key)
            if isinstance(value, Tensor):
                out[key] = value[keep]
    return out


def render(image: Tensor, plan: AugmentPlan, size: int, mean: Tensor) -> Tensor:
    """The pixels of one augmentation: uint8 (3, H, W) -> float32 (3, size, size) model input.

    Args:
        image: uint8 (3, H, W) RGB.
        plan: the random choices (`SSDAugmentation.plan`).
        size: output side S.
        mean: float32 (3, 1, 1) RGB mean on the 0-255 scale; the canvas fill.

    Returns:
        float32 (3, S, S), contiguous: RGB 0-255 minus ``mean``.
    """
    height, width = image.shape[-2:]
    region = visible_region(width, height, plan.expansion, plan.crop.rect, size)
    if region is None:  # the crop holds only fill: the mean, i.e. zero once subtracted
        return torch.zeros(3, size, size)
    (sx0, sy0, sx1, sy1), (dx0, dy0, dx1, dy1) = region
    patch = resize_bilinear(image[:, sy0:sy1, sx0:sx1], dy1 - dy0, dx1 - dx0)
    if (dx0, dy0, dx1, dy1) == (0, 0, size, size):
        canvas = view = patch
    else:
        canvas = mean.expand(3, size, size).clone()
        view = canvas[:, dy0:dy1, dx0:dx1]
        view.copy_(patch)
    if not plan.photometric.identity:
        apply_photometric(view, plan.photometric)
    if plan.flip:
        canvas = canvas.flip(-1)
    return canvas.sub_(mean)


def transform_boxes(boxes: Tensor, plan: AugmentPlan) -> Tensor:
    """The boxes of the objects ``plan`` keeps, as fractions of the output.

    Shifted onto the canvas, clipped to the crop, divided by its size and mirrored,
    folded into one scale and offset per coordinate (clipping to the crop is clamping
    the fractions to [0, 1]; mirroring swaps x1 and x2 and maps x to 1 - x).

    Args:
        boxes: float (n, 4) xyxy pixels of the original image, inside it.

    Returns:
        float32 (k, 4) xyxy fractions in [0, 1], k = ``plan.crop.keep.sum()``.
    """
    x0, y0, x1, y1 = plan.crop.rect
    sx, sy = 1.0 / (x1 - x0), 1.0 / (y1 - y0)
    ox, oy = (plan.expansion.left - x0) * sx, (plan.expansion.top - y0) * sy
    kept = boxes[plan.crop.keep].to(torch.float32)
    if plan.flip:
        kept = kept[:, [2, 1, 0, 3]]
        scale, offset = [-sx, sy, -sx, sy], [1.0 - ox, oy, 1.0 - ox, oy]
    else:
        scale, offset = [sx, sy, sx, sy], [ox, oy, ox, oy]
    return torch.addcmul(torch.tensor(offset), kept, torch.tensor(scale)).clamp_(0.0, 1.0)


class SSDAugmentation:
    """The paper's training augmentation, ending in the model's input (each of the first two
    steps can be switched off).

    Photometric distortion (brightness, contrast, saturation, hue; `singleshot.data.photometric`),
    expansion onto a mean-filled canvas up to 4x each side (p 0.5), the min-IoU random crop
    (`singleshot.data.geometric`), horizontal flip (p 0.5), bilinear resize to
    ``size`` x ``size`` and subtraction of ``mean``. Objects whose centre the crop leaves
    out are dropped; boxes are first clipped to the image, and empty ones are dropped.

    Randomness: ``aug(image, target, generator=g)`` draws everything from ``g``;
    without it, from the ``generator`` given at construction, or else from torch's
    global generator. A generator seeded per sample (e.g. from the run seed and the
    sample's position in the stream) reproduces a run whatever the number of DataLoader
    workers. Note that a generator given at construction is copied into each DataLoader
    worker with the same state, so workers would repeat each other's draws: pass one
    per call in that setting (torch's global generator is seeded per worker by PyTorch).

    Args:
        size: output side S (300 or 512 for the paper's models).
        mean: RGB mean on the 0-255 scale (the model's ``image_mean``); also the fill.
        generator: default source of randomness.
        std: RGB divisor on the 0-255 scale applied after the mean (the model's
            ``image_std``); None or all ones: none.
        photometric: apply the colour distortion (False: colours are left as they are;
            torchvision's SSDLite recipe has none).
        expand: apply the expansion onto a mean-filled canvas (False: the crop is drawn
            from the image itself; torchvision's SSDLite recipe has none).

    Switching a step off changes no other draw: the same generator state gives the same
    crop and flip with the step on or off, and with both on the draws are the paper
    pipeline's as before.
    """

    def __init__(
        self,
        size: int = 300,
        mean: Sequence[float] = VGG_MEAN,
        generator: torch.Generator | None = None,
        std: Sequence[float] | None = None,
        photometric: bool = True,
        expand: bool = True,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be a positive integer, got {size}")
        if len(mean) != 3:
            raise ValueError(f"mean must hold 3 values (R, G, B), got {len(mean)}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.generator = generator
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = std_divisor(std, (3, 1, 1))
        self.std = None if std is None else tuple(float(s) for s in std)
        self.photometric = bool(photometric)
        self.expand = bool(expand)

    def plan(
        self, width: int, height: int, boxes: Tensor, generator: torch.Generator | None = None
    ) -> AugmentPlan:
        """Draw the random choices for an image of ``width`` x ``height`` pixels.

        Args:
            boxes: float32 (n, 4) xyxy pixels inside the image.
            generator: source of randomness (None = torch's global generator).
        """
        # Drawn whether or not a step is on, so that switching one off leaves the others' draws.
        u = torch.rand(NUM_PHOTOMETRIC_DRAWS + 5, generator=generator, dtype=torch.float64).tolist()
        photometric = (
            sample_photometric(u[:NUM_PHOTOMETRIC_DRAWS]) if self.photometric else PhotometricParams()
        )
        if self.expand:
            expansion = sample_expansion(width, height, u[NUM_PHOTOMETRIC_DRAWS:-1], EXPAND_PROBABILITY)
        else:
            expansion = Expansion(width, height, 0, 0)
        shift = boxes.new_tensor([expansion.left, expansion.top] * 2)
        crop = sample_crop(boxes + shift, expansion.width, expansion.height, generator)
        return AugmentPlan(photometric, expansion, crop, flip=u[-1] < FLIP_PROBABILITY)

    def __call__(
        self, image: Tensor, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """uint8 (3, H, W) + target -> float32 (3, S, S) + target with boxes as fractions.

        Raises:
            ValueError: the image is not uint8 (3, H, W), or the target's boxes are not a
                finite (n, 4) tensor matching its per-object keys; names the image id.
        """
        where = _describe(target)
        _check_image(image, where)
        boxes = _read_boxes(target, where)
        height, width = image.shape[-2:]
        boxes = _clip_to_image(boxes, width, height)
        plan = self.plan(width, height, boxes, self.generator if generator is None else generator)
        x = render(image, plan, self.size, self._mean)
        if self._std is not None:
            x = x.div_(self._std)
        return x, _with_objects(target, transform_boxes(boxes, plan), plan.crop.keep)

    def __repr__(self) -> str:
        off = "".join(f", {name}=False" for name in ("photometric", "expand") if not getattr(self, name))
        return f"{type(self).__name__}(size={self.size}, mean={self.mean}{off})"


class EvalTransform:
    """Resize + normalise only: the evaluation (and prediction) input.

    The image is resized with `singleshot.transforms.preprocess`, exactly as
    ``model.predict`` does; boxes become fractions of the image (clipped to [0, 1]) and
    no object is dropped.

    Args:
        size: output side S.
        mean: RGB mean on the 0-255 scale (the model's ``image_mean``).
        std: RGB divisor on the 0-255 scale (the model's ``image_std``); None: none.
    """

    def __init__(
        self, size: int = 300, mean: Sequence[float] = VGG_MEAN, std: Sequence[float] | None = None
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be a positive integer, got {size}")
        if len(mean) != 3:
            raise ValueError(f"mean must hold 3 values (R, G, B), got {len(mean)}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        std_divisor(std, (3, 1, 1))  # checks it
        self.std = None if std is None else tuple(float(s) for s in std)

    def __call__(
        self, image: Tensor, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """uint8 (3, H, W) + target -> float32 (3, S, S) + target with boxes as fractions.

        ``generator`` is accepted (and unused) so that training and evaluation
        transforms are called alike.
        """
        where = _describe(target)
        _check_image(image, where)
        boxes = _read_boxes(target, where)
        height, width = image.shape[-2:]
        scale = boxes.new_tensor([width, height, width, height])
        x = preprocess([image], self.size, self.mean, std=self.std)[0]
        return x, _with_objects(target, (boxes / scale).clamp_(0.0, 1.0), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mean={self.mean})"
