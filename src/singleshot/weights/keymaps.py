"""Parameter-name maps between singleshot's SSD and the layouts of ssd.pytorch and torchvision.

Only names change: every port stores the same convolutions with the same shapes, and
their heads flatten level -> row -> column -> box as ours do, so tensors copy over as is.

ssd.pytorch (``amdegroot/ssd.pytorch``, ``ssd.py``)::

    vgg.{0,2,5,7,10,12,14,17,19,21,24,26,28,31,33}   conv1_1 ... conv5_3, conv6, conv7
    L2Norm.weight                                      conv4_3's scale
    extras.{2i}, extras.{2i+1}                         extra block i: 1x1 reduce, 3x3 conv
    loc.{k}, conf.{k}                                  heads of level k

torchvision (``torchvision.models.detection.ssd300_vgg16``)::

    backbone.features.{0 ... 21}                      conv1_1 ... conv4_3 (same indices as above)
    backbone.scale_weight                              conv4_3's scale
    backbone.extra.0.{1,3,5}                           conv5_1 ... conv5_3
    backbone.extra.0.7.{1,3}                           conv6, conv7
    backbone.extra.{i+1}.{0,2}                         extra block i: reduce, conv
    head.regression_head.module_list.{k}              loc head of level k
    head.classification_head.module_list.{k}          conf head of level k
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

__all__ = [
    "VGG_INDEX_TO_NAME",
    "VGG_NAME_TO_INDEX",
    "our_vgg_module",
    "strip_prefix",
    "ssd_pytorch_to_ours",
    "ours_to_ssd_pytorch",
    "torchvision_to_ours",
    "ours_to_torchvision",
    "rename_state_dict",
]

# Positions of the convolutions in ssd.pytorch's ``vgg`` list (ReLUs and pools in between),
# which are also torchvision VGG16's ``features`` indices up to conv5_3.
VGG_INDEX_TO_NAME: dict[int, str] = {
    0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2",
    10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
    17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
    24: "conv5_1", 26: "conv5_2", 28: "conv5_3",
    31: "conv6", 33: "conv7",
}  # fmt: skip
VGG_NAME_TO_INDEX = {name: index for index, name in VGG_INDEX_TO_NAME.items()}

_TORCHVISION_UPPER = {"conv5_1": "1", "conv5_2": "3", "conv5_3": "5", "conv6": "7.1", "conv7": "7.3"}
_TORCHVISION_UPPER_INV = {v: k for k, v in _TORCHVISION_UPPER.items()}


def our_vgg_module(name: str) -> str:
    """ "conv4_3" -> "backbone.to_conv4_3.conv4_3"; "conv6" -> "backbone.to_conv7.conv6"."""
    stage = "to_conv4_3" if VGG_NAME_TO_INDEX[name] <= 21 else "to_conv7"
    return f"backbone.{stage}.{name}"


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop ``prefix`` (DataParallel's ``module.``) from the keys that all carry it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def ssd_pytorch_to_ours(key: str) -> str | None:
    """One ssd.pytorch parameter name -> ours, or None if it is not part of the layout."""
    module, param = _split(key)
    if module == "L2Norm" and param == "weight":
        return "backbone.l2norm.weight"
    if m := re.fullmatch(r"vgg\.(\d+)", module):
        name = VGG_INDEX_TO_NAME.get(int(m[1]))
        return f"{our_vgg_module(name)}.{param}" if name else None
    if m := re.fullmatch(r"extras\.(\d+)", module):
        index = int(m[1])
        return f"extras.{index // 2}.{('reduce', 'conv')[index % 2]}.{param}"
    if m := re.fullmatch(r"(loc|conf)\.(\d+)", module):
        return f"head.{m[1]}.{m[2]}.{param}"
    return None


def ours_to_ssd_pytorch(key: str) -> str | None:
    """Inverse of `ssd_pytorch_to_ours`."""
    module, param = _split(key)
    if key == "backbone.l2norm.weight":
        return "L2Norm.weight"
    if m := re.fullmatch(r"backbone\.to_conv(?:4_3|7)\.(conv\d_?\d?)", module):
        index = VGG_NAME_TO_INDEX.get(m[1])
        return f"vgg.{index}.{param}" if index is not None else None
    if m := re.fullmatch(r"extras\.(\d+)\.(reduce|conv)", module):
        return f"extras.{2 * int(m[1]) + (m[2] == 'conv')}.{param}"
    if m := re.fullmatch(r"head\.(loc|conf)\.(\d+)", module):
        return f"{m[1]}.{m[2]}.{param}"
    return None


def torchvision_to_ours(key: str) -> str | None:
    """One torchvision ``ssd300_vgg16`` parameter name -> ours, or None."""
    module, param = _split(key)
    if key == "backbone.scale_weight":
        return "backbone.l2norm.weight"
    if m := re.fullmatch(r"backbone\.features\.(\d+)", module):
        name = VGG_INDEX_TO_NAME.get(int(m[1]))
        return f"{our_vgg_module(name)}.{param}" if name and VGG_NAME_TO_INDEX[name] <= 21 else None
    if m := re.fullmatch(r"backbone\.extra\.0\.(\d(?:\.\d)?)", module):
        name = _TORCHVISION_UPPER_INV.get(m[1])
        return f"{our_vgg_module(name)}.{param}" if name else None
    if m := re.fullmatch(r"backbone\.extra\.(\d+)\.([02])", module):
        return f"extras.{int(m[1]) - 1}.{'reduce' if m[2] == '0' else 'conv'}.{param}"
    if m := re.fullmatch(r"head\.(regression|classification)_head\.module_list\.(\d+)", module):
        return f"head.{'loc' if m[1] == 'regression' else 'conf'}.{m[2]}.{param}"
    return None


def ours_to_torchvision(key: str) -> str | None:
    """Inverse of `torchvision_to_ours`."""
    module, param = _split(key)
    if key == "backbone.l2norm.weight":
        return "backbone.scale_weight"
    if m := re.fullmatch(r"backbone\.to_conv(?:4_3|7)\.(conv\d_?\d?)", module):
        name = m[1]
        if name not in VGG_NAME_TO_INDEX:
            return None
        if VGG_NAME_TO_INDEX[name] <= 21:
            return f"backbone.features.{VGG_NAME_TO_INDEX[name]}.{param}"
        return f"backbone.extra.0.{_TORCHVISION_UPPER[name]}.{param}"
    if m := re.fullmatch(r"extras\.(\d+)\.(reduce|conv)", module):
        return f"backbone.extra.{int(m[1]) + 1}.{0 if m[2] == 'reduce' else 2}.{param}"
    if m := re.fullmatch(r"head\.(loc|conf)\.(\d+)", module):
        kind = "regression" if m[1] == "loc" else "classification"
        return f"head.{kind}_head.module_list.{m[2]}.{param}"
    return None


def rename_state_dict(
    state_dict: Mapping[str, Tensor], rename: Callable[[str], str | None], layout: str
) -> dict[str, Tensor]:
    """Apply ``rename`` to every key; ValueError listing the keys that do not belong to ``layout``."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        elif new in out:
            raise ValueError(f"two {layout} keys map to {new!r}")
        else:
            out[new] = value
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"not in the {layout} layout: unexpected keys {shown}")
    return out
