"""Foreign weight files -> singleshot models or base networks, checked, with errors naming the file.

What ``singleshot convert`` does, callable from Python:

>>> model = convert_file("ssd300_mAP_77.43_v2.pth", "ssd.pytorch")
>>> model = model_from_vgg16("vgg16-397923af.pth", "ssd300_voc", num_classes=4, seed=0)
>>> reduced = reduced_vgg16_backbone("vgg16-397923af.pth")   # vgg16_reducedfc.pth layout
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .convert import convert_model
from .io import as_state_dict, read_state_dict
from .keymaps import strip_prefix
from .vgg16 import is_torchvision_vgg16, load_vgg16_backbone, reduce_vgg16

__all__ = ["convert_file", "model_from_vgg16", "reduced_vgg16_backbone", "read_class_names_with_background"]

WeightSource = str | os.PathLike | Mapping[str, Tensor]


def _state_and_name(source: WeightSource) -> tuple[dict[str, Tensor], str]:
    """(state dict, name for messages): a path is read (weights_only) and named by itself."""
    if isinstance(source, (str, os.PathLike)):
        return read_state_dict(source), str(source)
    return as_state_dict(source), "state dict"


def read_class_names_with_background(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored); index 0 = "__background__".

    Raises:
        ValueError: unreadable file, no names, or duplicate names; the message names the file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read class names: {error}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    if names[0] != "__background__":
        names.insert(0, "__background__")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{path}: duplicate class names: {', '.join(duplicates)}")
    return names


def convert_file(
    source: WeightSource,
    layout: str,
    preset: str | None = None,
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """An ssd.pytorch or torchvision SSD file (or state dict) -> a singleshot `SSD`.

    ``layout`` is "ssd.pytorch" or "torchvision"; the rest is `convert_model`'s.

    Raises:
        ValueError: unreadable file, another layout, or classes that do not fit; the message
            names the file.
    """
    state, name = _state_and_name(source)
    try:
        return convert_model(state, layout, preset=preset, class_names=class_names)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def model_from_vgg16(
    source: WeightSource,
    preset: str = "ssd300_voc",
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A detector whose base network is VGG16's (either layout) and the rest freshly initialised.

    The extras and heads get the paper's random initialisation from ``torch.manual_seed(seed)``:
    the same seed gives the same weights. The caller's global RNG state is left as it was.

    Raises:
        ValueError: unreadable file, not a VGG16 of either layout, or wrong shapes; the
            message names the file.
    """
    from ..presets import build_model

    state, name = _state_and_name(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        names = list(class_names) if class_names is not None else None
        model = build_model(preset, num_classes=num_classes, class_names=names)
    try:
        load_vgg16_backbone(model, state)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return model


def reduced_vgg16_backbone(source: WeightSource) -> dict[str, Tensor]:
    """SSD's base network in ssd.pytorch's ``vgg16_reducedfc.pth`` layout, checked.

    A torchvision ImageNet VGG16 is reduced (`reduce_vgg16`, for SSD's default image mean);
    a reduced one is kept as it is (without a ``module.`` prefix). Either is then loaded into
    a throwaway ``ssd300_voc`` model, which checks every key and shape.

    Returns:
        ``{"0.weight", ..., "33.bias"}``: conv1_1 ... conv5_3, conv6 (1024, 512, 3, 3), conv7.

    Raises:
        ValueError: unreadable file, another layout, or wrong shapes; the message names the file.
    """
    from ..presets import build_model

    state, name = _state_and_name(source)
    state = strip_prefix(state)
    try:
        reduced = reduce_vgg16(state) if is_torchvision_vgg16(state) else state
        with torch.random.fork_rng(devices=[]):  # the throwaway model leaves the RNG alone
            throwaway = build_model("ssd300_voc")
        load_vgg16_backbone(throwaway, reduced)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return reduced
