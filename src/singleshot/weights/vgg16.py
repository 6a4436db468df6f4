"""ImageNet VGG16 -> SSD's base network, as the paper did (section 3, "Base network").

fc6 and fc7 become convolutions: fc6's (4096, 512 * 7 * 7) matrix is viewed as a
(4096, 512, 7, 7) kernel and subsampled to (1024, 512, 3, 3) by keeping every 4th
filter and every 3rd tap (``[::4, :, ::3, ::3]``); taps 3 apart on a 7x7 kernel are
then applied with dilation 6 on conv5's grid ("atrous"), so the layer still sees a
similar field. fc7 keeps every 4th output and input: (1024, 1024, 1, 1). This gives
ssd.pytorch's ``vgg16_reducedfc.pth`` (keys ``"0.weight"`` ... ``"33.bias"``).

torchvision's VGG16 expects ``(x / 255 - mean) / std`` with ImageNet's mean and std, SSD
feeds ``x - image_mean`` on the 0-255 scale. conv1_1 is linear, so the difference folds
into it exactly: with ``a_c = 1 / (255 std_c)`` and ``d_c = image_mean_c - 255 mean_c``,
``W'[o, c] = W[o, c] a_c`` and ``b'[o] = b[o] + sum_{c, i, j} W[o, c, i, j] a_c d_c``. The
bias term assumes all nine taps see the image: on the one-pixel border, zero padding
stands for a different colour in the two conventions, so outputs differ there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..transforms import VGG_MEAN
from .io import backbone_of, read_weights_source, source_name
from .keymaps import VGG_INDEX_TO_NAME, our_vgg_module, strip_prefix

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "reduce_vgg16",
    "load_vgg16_backbone",
    "backbone_state_dict",
    "is_reduced_vgg16",
    "is_torchvision_vgg16",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# conv1_1 ... conv5_3 shapes (out, in, 3, 3) by ssd.pytorch / torchvision index, then conv6, conv7.
_VGG_CONV_SHAPES: dict[int, tuple[int, ...]] = {
    0: (64, 3, 3, 3), 2: (64, 64, 3, 3), 5: (128, 64, 3, 3), 7: (128, 128, 3, 3),
    10: (256, 128, 3, 3), 12: (256, 256, 3, 3), 14: (256, 256, 3, 3),
    17: (512, 256, 3, 3), 19: (512, 512, 3, 3), 21: (512, 512, 3, 3),
    24: (512, 512, 3, 3), 26: (512, 512, 3, 3), 28: (512, 512, 3, 3),
    31: (1024, 512, 3, 3), 33: (1024, 1024, 1, 1),
}  # fmt: skip


def is_torchvision_vgg16(state_dict: Mapping[str, Tensor]) -> bool:
    return "features.0.weight" in state_dict and "classifier.0.weight" in state_dict


def is_reduced_vgg16(state_dict: Mapping[str, Tensor]) -> bool:
    return "0.weight" in state_dict and "33.weight" in state_dict


def _check_shape(where: str, key: str, tensor: Tensor, shape: Sequence[int]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{where}: {key} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


def reduce_vgg16(
    vgg16_state_dict: Mapping[str, Tensor],
    image_mean: Sequence[float] = VGG_MEAN,
    source_mean: Sequence[float] = IMAGENET_MEAN,
    source_std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Tensor]:
    """torchvision's ImageNet VGG16 state dict -> SSD's base network in ssd.pytorch's layout.

    Args:
        vgg16_state_dict: ``torchvision.models.vgg16().state_dict()`` layout (``features.N.*``,
            ``classifier.{0,3,6}.*``), optionally with a ``module.`` prefix.
        image_mean: the SSD model's RGB mean on the 0-255 scale (its input is ``x - image_mean``).
        source_mean, source_std: the normalisation the VGG16 weights were trained with, on
            the 0-1 scale (torchvision's ImageNet values by default).

    Returns:
        ``{"0.weight", "0.bias", ..., "33.bias"}``: conv1_1 ... conv5_3 at ssd.pytorch's
        ``vgg`` indices with conv1_1 folded for SSD's input, conv6 (1024, 512, 3, 3) at 31 and
        conv7 (1024, 1024, 1, 1) at 33, in the input's dtype.

    Raises:
        ValueError: missing keys, wrong shapes, or non-finite fc weights (torchvision's
            ``IMAGENET1K_FEATURES`` weights leave the classifier empty: use ``IMAGENET1K_V1``).
    """
    state = strip_prefix(vgg16_state_dict)
    out = _copy_convolutions(state)
    out.update(_reduce_fc(state))
    out["0.weight"], out["0.bias"] = _fold_normalisation(
        out["0.weight"], out["0.bias"], image_mean, source_mean, source_std
    )
    return out


_WHERE = "VGG16 state dict"


def _copy_convolutions(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """conv1_1 ... conv5_3 (``features.N``) cloned to ``N.weight`` / ``N.bias``, keys and shapes checked."""
    required = [f"features.{i}.{p}" for i in VGG_INDEX_TO_NAME if i <= 28 for p in ("weight", "bias")]
    required += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"{_WHERE}: not a torchvision VGG16 (missing {', '.join(missing[:6])})")
    out: dict[str, Tensor] = {}
    for index in (i for i in VGG_INDEX_TO_NAME if i <= 28):
        weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        _check_shape(_WHERE, f"features.{index}.weight", weight, _VGG_CONV_SHAPES[index])
        _check_shape(_WHERE, f"features.{index}.bias", bias, _VGG_CONV_SHAPES[index][:1])
        out[f"{index}.weight"], out[f"{index}.bias"] = weight.clone(), bias.clone()
    return out


def _reduce_fc(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """fc6 -> conv6 (1024, 512, 3, 3) at 31 and fc7 -> conv7 (1024, 1024, 1, 1) at 33, subsampled."""
    fc6_w, fc6_b = state["classifier.0.weight"], state["classifier.0.bias"]
    fc7_w, fc7_b = state["classifier.3.weight"], state["classifier.3.bias"]
    _check_shape(_WHERE, "classifier.0.weight", fc6_w, (4096, 512 * 7 * 7))
    _check_shape(_WHERE, "classifier.3.weight", fc7_w, (4096, 4096))
    if not all(torch.isfinite(t).all() for t in (fc6_w, fc6_b, fc7_w, fc7_b)):
        raise ValueError(
            f"{_WHERE}: fc6/fc7 weights are not finite (torchvision's IMAGENET1K_FEATURES weights "
            "carry no classifier); use VGG16_Weights.IMAGENET1K_V1"
        )
    return {
        "31.weight": fc6_w.view(4096, 512, 7, 7)[::4, :, ::3, ::3].clone(),
        "31.bias": fc6_b[::4].clone(),
        "33.weight": fc7_w[::4, ::4].reshape(1024, 1024, 1, 1).clone(),
        "33.bias": fc7_b[::4].clone(),
    }


def _fold_normalisation(
    weight: Tensor,
    bias: Tensor,
    image_mean: Sequence[float],
    source_mean: Sequence[float],
    source_std: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """conv1_1 (64, 3, 3, 3) and (64,) for input ``x - image_mean`` (see the module docstring), in float64."""
    scale = 1.0 / (255.0 * torch.tensor(source_std, dtype=torch.float64))  # a_c
    shift = torch.tensor(image_mean, dtype=torch.float64) - 255.0 * torch.tensor(
        source_mean, dtype=torch.float64
    )
    folded = weight.double() * scale.view(1, 3, 1, 1)
    new_bias = (bias.double() + (folded * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))).to(bias.dtype)
    return folded.to(weight.dtype), new_bias


def backbone_state_dict(reduced: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ssd.pytorch `vgg16_reducedfc.pth` keys -> our backbone's (`backbone.to_conv4_3.conv1_1.weight` ...)."""
    return {
        f"{our_vgg_module(name)}.{param}": reduced[f"{index}.{param}"]
        for index, name in VGG_INDEX_TO_NAME.items()
        for param in ("weight", "bias")
    }


def load_vgg16_backbone(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Initialise an SSD's VGG16 base network from ImageNet weights, in place.

    Args:
        model: an SSD built on `singleshot.models.VGG16Backbone` (the ``ssd300_*`` and
            ``ssd512_*`` presets).
        source: a path (``.pth`` read with ``weights_only=True``, or ``.safetensors``) or a
            state dict, in ssd.pytorch's ``vgg16_reducedfc.pth`` layout (``"0.weight"`` ...
            ``"33.bias"``) or torchvision's ImageNet VGG16 layout (reduced with `reduce_vgg16`
            for ``model.image_mean``).

    conv1_1 ... conv7 are overwritten; the L2Norm scale keeps its initial value (20), extras
    and heads are untouched.

    Raises:
        ValueError: the model has no VGG16 backbone, or the source is unreadable, of another
            layout, or has wrong shapes; the message names the file.
    """
    from ..models.vgg import VGG16Backbone

    where = source_name(source, "VGG16")
    backbone_of(model, VGG16Backbone, "VGG16", where)
    state = read_weights_source(source, where)
    if is_torchvision_vgg16(state):
        try:
            state = reduce_vgg16(state, image_mean=getattr(model, "image_mean", VGG_MEAN))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    elif not is_reduced_vgg16(state):
        shown = ", ".join(list(state)[:4])
        raise ValueError(
            f"{where}: neither a vgg16_reducedfc.pth layout ('0.weight' ... '33.bias') nor a torchvision "
            f"VGG16 state dict (keys start {shown})"
        )
    missing = [f"{i}.{p}" for i in VGG_INDEX_TO_NAME for p in ("weight", "bias") if f"{i}.{p}" not in state]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    expected = {f"{i}.{p}" for i in VGG_INDEX_TO_NAME for p in ("weight", "bias")}
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise ValueError(f"{where}: unexpected keys for a VGG16 base network: {', '.join(unexpected[:6])}")
    for index, shape in _VGG_CONV_SHAPES.items():
        _check_shape(where, f"{index}.weight", state[f"{index}.weight"], shape)
        _check_shape(where, f"{index}.bias", state[f"{index}.bias"], shape[:1])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in backbone_state_dict(state).items():
            params[key].copy_(value)
