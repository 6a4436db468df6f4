"""torchvision's SSDLite (``ssdlite320_mobilenet_v3_large``) and ImageNet MobileNetV3-Large weights.

Parameter names of torchvision's SSDLite and ours (`singleshot.models.ssdlite`)::

    backbone.features.0.{i}.*            (i < 13)   backbone.features.{i}.*
    backbone.features.0.13.*                        backbone.features.13.block.0.*   C4's expansion
    backbone.features.1.0.{j}.*          (j >= 1)   backbone.features.13.block.{j}.*
    backbone.features.1.{k}.*            (k >= 1)   backbone.features.{13+k}.*
    backbone.extra.{i}.{0,1,2}.{0,1}.*              extras.{i}.{reduce,depthwise,expand}.{conv,bn}.*
    head.regression_head.module_list.{k}.0.{0,1}.*  head.loc.{k}.depthwise.{conv,bn}.*
    head.regression_head.module_list.{k}.1.*        head.loc.{k}.predict.*
    (classification_head: head.conf.{k}.* likewise)

torchvision splits MobileNetV3's C4 block (``features.13``) after its expansion; we keep
the block whole and read the source inside it, so our backbone's names are those of
torchvision's ImageNet ``mobilenet_v3_large`` (``features.N.*``) behind ``backbone.``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .io import backbone_of, read_weights_source, source_name

__all__ = [
    "is_torchvision_ssdlite",
    "is_singleshot_ssdlite",
    "torchvision_ssdlite_to_ours",
    "ours_to_torchvision_ssdlite",
    "is_torchvision_mobilenet_v3",
    "load_mobilenet_v3_backbone",
    "load_backbone",
]

_C4 = 13
_BLOCK_PARTS = ("reduce", "depthwise", "expand")
_LAYER_PARTS = ("conv", "bn")


def is_torchvision_ssdlite(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict has torchvision SSDLite's keys (its backbone split in two Sequentials)."""
    return "backbone.features.0.0.0.weight" in state_dict and "backbone.features.0.13.0.weight" in state_dict


def is_singleshot_ssdlite(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict is one of our SSDLite models (depthwise-separable heads)."""
    return "head.conf.0.predict.bias" in state_dict


def _backbone_to_ours(rest: str) -> str | None:
    if m := re.fullmatch(r"0\.(\d+)\.(.+)", rest):
        index = int(m[1])
        if index < _C4:
            return f"backbone.features.{index}.{m[2]}"
        return f"backbone.features.{_C4}.block.0.{m[2]}" if index == _C4 else None
    if m := re.fullmatch(r"1\.(\d+)\.(.+)", rest):
        index = int(m[1])
        if index == 0:
            # a slice of C4's block: its layers keep their indices (1, 2, 3)
            inner = re.fullmatch(r"([1-9]\d*)\.(.+)", m[2])
            return f"backbone.features.{_C4}.block.{inner[1]}.{inner[2]}" if inner else None
        return f"backbone.features.{_C4 + index}.{m[2]}"
    return None


def torchvision_ssdlite_to_ours(key: str) -> str | None:
    """One torchvision ``ssdlite320_mobilenet_v3_large`` parameter name -> ours, or None."""
    if key.startswith("backbone.features."):
        return _backbone_to_ours(key[len("backbone.features.") :])
    if m := re.fullmatch(r"backbone\.extra\.(\d+)\.([012])\.([01])\.(\w+)", key):
        return f"extras.{m[1]}.{_BLOCK_PARTS[int(m[2])]}.{_LAYER_PARTS[int(m[3])]}.{m[4]}"
    kind = r"head\.(regression|classification)_head\.module_list\.(\d+)"
    if m := re.fullmatch(kind + r"\.0\.([01])\.(\w+)", key):
        head = "loc" if m[1] == "regression" else "conf"
        return f"head.{head}.{m[2]}.depthwise.{_LAYER_PARTS[int(m[3])]}.{m[4]}"
    if m := re.fullmatch(kind + r"\.1\.(weight|bias)", key):
        return f"head.{'loc' if m[1] == 'regression' else 'conf'}.{m[2]}.predict.{m[3]}"
    return None


def _backbone_to_torchvision(rest: str) -> str | None:
    m = re.fullmatch(r"(\d+)\.(.+)", rest)
    if not m:
        return None
    index = int(m[1])
    if index < _C4:
        return f"backbone.features.0.{index}.{m[2]}"
    if index > _C4:
        return f"backbone.features.1.{index - _C4}.{m[2]}"
    inner = re.fullmatch(r"block\.(\d+)\.(.+)", m[2])
    if not inner:
        return None
    position = int(inner[1])
    if position == 0:
        return f"backbone.features.0.{_C4}.{inner[2]}"
    return f"backbone.features.1.0.{position}.{inner[2]}"


def ours_to_torchvision_ssdlite(key: str) -> str | None:
    """Inverse of `torchvision_ssdlite_to_ours`."""
    if key.startswith("backbone.features."):
        return _backbone_to_torchvision(key[len("backbone.features.") :])
    if m := re.fullmatch(r"extras\.(\d+)\.(reduce|depthwise|expand)\.(conv|bn)\.(\w+)", key):
        return f"backbone.extra.{m[1]}.{_BLOCK_PARTS.index(m[2])}.{_LAYER_PARTS.index(m[3])}.{m[4]}"
    if m := re.fullmatch(r"head\.(loc|conf)\.(\d+)\.depthwise\.(conv|bn)\.(\w+)", key):
        kind = "regression" if m[1] == "loc" else "classification"
        return f"head.{kind}_head.module_list.{m[2]}.0.{_LAYER_PARTS.index(m[3])}.{m[4]}"
    if m := re.fullmatch(r"head\.(loc|conf)\.(\d+)\.predict\.(weight|bias)", key):
        kind = "regression" if m[1] == "loc" else "classification"
        return f"head.{kind}_head.module_list.{m[2]}.1.{m[3]}"
    return None


def is_torchvision_mobilenet_v3(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict has torchvision ``MobileNetV3``'s keys (``features.*``, ``classifier.*``)."""
    return "features.0.0.weight" in state_dict and "classifier.0.weight" in state_dict


def load_mobilenet_v3_backbone(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Initialise an SSDLite's MobileNetV3-Large from ImageNet weights, in place.

    Args:
        model: an SSD on `singleshot.models.ssdlite.MobileNetV3Backbone` with the full tail
            (``reduced_tail=False``: ImageNet weights have the full width).
        source: a path (``.pth`` read with ``weights_only=True``, or ``.safetensors``) or a state
            dict of torchvision's ``mobilenet_v3_large`` (``features.*``; ``classifier.*`` is dropped).

    Every backbone tensor (BatchNorm statistics too) is overwritten; the extras and heads are
    untouched. The weights are used with the model's [-1, 1] input as they are, as torchvision does.

    Raises:
        ValueError: another backbone, a reduced tail, or a source of another layout or shape;
            the message names the file.
    """
    from ..models.ssdlite import MobileNetV3Backbone

    where = source_name(source, "MobileNetV3")
    backbone = backbone_of(model, MobileNetV3Backbone, "MobileNetV3", where)
    if backbone.reduced_tail:
        raise ValueError(
            f"{where}: ImageNet MobileNetV3 weights need the full tail; build the backbone with "
            "reduced_tail=False (training with --backbone-weights does)"
        )
    state = read_weights_source(source, where)
    if not is_torchvision_mobilenet_v3(state):
        shown = ", ".join(list(state)[:4])
        raise ValueError(f"{where}: not a torchvision mobilenet_v3_large state dict (keys start {shown})")
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    own = backbone.features.state_dict()
    missing = sorted(set(own) - set(features))
    unexpected = sorted(set(features) - set(own))
    wrong = [k for k in own if k in features and features[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}" for label, keys in found if keys)
        raise ValueError(f"{where}: does not fit MobileNetV3-Large's features.* ({detail})")
    with torch.no_grad():
        backbone.features.load_state_dict(features, strict=True)


def load_backbone(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """ImageNet weights into ``model``'s backbone, by its kind: VGG16 (`load_vgg16_backbone`) or
    MobileNetV3-Large (`load_mobilenet_v3_backbone`). ValueError for any other backbone."""
    from ..models.ssdlite import MobileNetV3Backbone
    from .vgg16 import load_vgg16_backbone

    if isinstance(getattr(model, "backbone", None), MobileNetV3Backbone):
        load_mobilenet_v3_backbone(model, source)
    else:
        load_vgg16_backbone(model, source)
