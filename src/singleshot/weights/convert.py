"""Whole-detector weights from ssd.pytorch and torchvision, and back.

`convert` only renames keys (see `singleshot.weights.keymaps`); `convert_model` also
picks the matching preset, class count, class names and prior clipping, so that the
result computes what the source model computes:

- ssd.pytorch: SSD300 with ``voc`` default boxes for 21 classes, ``coco`` otherwise (its
  own rule), centre-clipped priors; its input is RGB minus (123, 117, 104), as ours.
- torchvision ``ssd300_vgg16``: SSD300 with COCO default boxes (its scales 0.07 ... 1.05
  times 300 are our 21, 45, ..., 315), 91 sparse COCO ids, and ``prior_clip="size"`` (its
  DefaultBoxGenerator clamps only the box sizes). Its normalisation, mean
  (0.48235, 0.45882, 0.40784) with std 1/255 on 0-1 input, is (123, 117, 104) on 0-255
  to within 9.2e-4 (its means are rounded to five decimals: 0.45882 x 255 = 116.9991).
  Reproduce its post-processing with ``detect(..., pre_nms_top_k=400, max_detections=200, clip=True)``.
- torchvision ``ssdlite320_mobilenet_v3_large`` (recognised by its keys, see
  `singleshot.weights.mobilenet`): preset ``ssdlite320_coco`` with its class count (91),
  whose priors, normalisation and post-processing are torchvision's already.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .keymaps import (
    ours_to_ssd_pytorch,
    ours_to_torchvision,
    rename_state_dict,
    ssd_pytorch_to_ours,
    strip_prefix,
    torchvision_to_ours,
)
from .mobilenet import (
    is_singleshot_ssdlite,
    is_torchvision_ssdlite,
    ours_to_torchvision_ssdlite,
    torchvision_ssdlite_to_ours,
)
from .names import default_class_names

if TYPE_CHECKING:
    from ..models.ssd import SSD

__all__ = ["SOURCES", "convert", "to_source", "convert_model", "infer_model_args"]

SOURCES = ("ssd.pytorch", "torchvision")

_TO_OURS = {"ssd.pytorch": ssd_pytorch_to_ours, "torchvision": torchvision_to_ours}
_FROM_OURS = {"ssd.pytorch": ours_to_ssd_pytorch, "torchvision": ours_to_torchvision}


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; expected one of {', '.join(SOURCES)}")


def convert(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename a foreign SSD state dict to singleshot's parameter names.

    Args:
        state_dict: an ssd.pytorch ``SSD`` state dict (a ``module.`` prefix from DataParallel
            is dropped) or a torchvision ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large`` state dict
            (which of the two: by its keys).
        source: ``"ssd.pytorch"`` or ``"torchvision"``.

    Returns:
        The same tensors under our names; ``build_model(<matching preset>).load_state_dict(...,
        strict=True)`` accepts it (see `infer_model_args` for the preset).

    Raises:
        ValueError: unknown source, or keys that are not part of that source's layout.
    """
    _check_source(source)
    state = strip_prefix(state_dict)
    if source == "torchvision" and is_torchvision_ssdlite(state):
        return rename_state_dict(state, torchvision_ssdlite_to_ours, "torchvision SSDLite")
    return rename_state_dict(state, _TO_OURS[source], f"{source} SSD")


def to_source(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Inverse of `convert`: our state dict under ssd.pytorch's or torchvision's names."""
    _check_source(source)
    if source == "torchvision" and is_singleshot_ssdlite(state_dict):
        return rename_state_dict(state_dict, ours_to_torchvision_ssdlite, "singleshot SSDLite")
    return rename_state_dict(state_dict, _FROM_OURS[source], "singleshot SSD")


def infer_model_args(converted: Mapping[str, Tensor], source: str) -> dict:
    """`build_model` arguments matching a converted state dict: preset, num_classes, prior_clip.

    The class count comes from the first conf head (``4 * num_classes`` filters: 4 boxes
    per cell at the first level in every SSD preset); SSD300 or SSD512 from the number
    of extra blocks (4 or 5). An SSDLite (torchvision's) is ``ssdlite320_coco`` with 6 boxes
    per cell at the first level.
    """
    _check_source(source)
    if is_singleshot_ssdlite(converted):
        return _ssdlite_args(converted, source)
    try:
        first_conf = converted["head.conf.0.bias"].shape[0]
    except KeyError:
        raise ValueError(f"{source} state dict has no classification head") from None
    if first_conf % 4:
        raise ValueError(f"{source} state dict: first conf head has {first_conf} filters, not 4 per class")
    num_classes = first_conf // 4
    blocks = {key.split(".")[1] for key in converted if key.startswith("extras.")}
    size = {4: 300, 5: 512}.get(len(blocks))
    if size is None:
        raise ValueError(
            f"{source} state dict has {len(blocks)} extra blocks; expected 4 (SSD300) or 5 (SSD512)"
        )
    if source == "torchvision":
        return {
            "preset": f"ssd{size}_coco",
            "num_classes": num_classes,
            "prior_clip": "size",
            "dataset": "coco",
        }
    dataset = "voc" if num_classes == 21 else "coco"
    return {
        "preset": f"ssd{size}_{dataset}",
        "num_classes": num_classes,
        "prior_clip": None,
        "dataset": dataset,
    }


def _ssdlite_args(converted: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    filters = converted["head.conf.0.predict.bias"].shape[0]
    if source != "torchvision" or filters % 6:
        raise ValueError(f"{source} state dict: an SSDLite head with {filters} filters is not torchvision's")
    return {"preset": "ssdlite320_coco", "num_classes": filters // 6, "prior_clip": "size", "dataset": "coco"}


def convert_model(
    state_dict: Mapping[str, Tensor],
    source: str,
    preset: str | None = None,
    class_names: Sequence[str] | None = None,
    prior_clip: str | None = None,
) -> SSD:
    """A ready `singleshot.SSD` (eval mode) computing what the source model computes.

    Args:
        state_dict: ssd.pytorch or torchvision SSD weights.
        source: ``"ssd.pytorch"`` or ``"torchvision"``.
        preset: overrides the inferred preset (e.g. ``"ssd300_coco"`` for an ssd.pytorch
            model trained on another dataset with COCO's boxes).
        class_names: names with index 0 = ``"__background__"``; default: VOC's or COCO's
            when the class count says so, else none.
        prior_clip: overrides the inferred clipping ("size" for torchvision, else the preset's).

    Raises:
        ValueError: the weights do not fit the preset (the message says which tensors).
    """
    from ..presets import build_model

    converted = convert(state_dict, source)
    args = infer_model_args(converted, source)
    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) != args["num_classes"]:
            raise ValueError(f"{len(class_names)} class names for a model with {args['num_classes']} classes")
    else:
        class_names = default_class_names(args["num_classes"], args["dataset"])
    model = build_model(
        preset or args["preset"],
        num_classes=args["num_classes"],
        prior_clip=prior_clip or args["prior_clip"],
        class_names=class_names,
    )
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source} weights do not fit preset {model.preset!r}: {error}") from None
    return model.eval()
