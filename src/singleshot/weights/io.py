"""Reading foreign weight files safely: data only, never code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

# the neutral file readers, re-exported here where they used to live
from ..fileio import is_safetensors_file, read_safetensors, torch_load_data
from .keymaps import strip_prefix

__all__ = [
    "read_state_dict",
    "as_state_dict",
    "backbone_of",
    "read_weights_source",
    "source_name",
    "is_safetensors_file",
    "read_safetensors",
    "torch_load_data",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def as_state_dict(obj: Any, where: str = "state dict") -> dict[str, Tensor]:
    """A flat ``{name: Tensor}`` from a state dict, or from a dict holding one under
    ``"state_dict"`` or ``"model"`` (how training scripts often save them)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
    raise ValueError(f"{where}: expected a state dict (a mapping of parameter names to tensors)")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a ``.pth`` / ``.pt`` file (weights_only) or a ``.safetensors`` file.

    Raises:
        ValueError: missing, empty, truncated or unsafe file, or no state dict inside;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if is_safetensors_file(path):
        tensors, _ = read_safetensors(path)
        return tensors
    return as_state_dict(torch_load_data(path), str(path))


def source_name(source: str | os.PathLike | Mapping[str, Tensor], kind: str) -> str:
    """How errors name a weights source: its path, or "<kind> state dict" for an in-memory one."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"{kind} state dict"


def read_weights_source(source: str | os.PathLike | Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """A path (`read_state_dict`) or a state dict (`as_state_dict`), without DataParallel's
    ``module.`` prefix. ValueError naming ``where`` when it holds no state dict."""
    if isinstance(source, (str, os.PathLike)):
        return strip_prefix(read_state_dict(Path(source)))
    return strip_prefix(as_state_dict(source, where))


def backbone_of(model: nn.Module, cls: type[ModuleT], kind: str, where: str) -> ModuleT:
    """``model.backbone`` when it is a ``cls``; else ValueError naming ``where`` (the source of
    ``kind`` weights that cannot go into this model)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, cls):
        raise ValueError(
            f"{where}: cannot load {kind} weights into a model without a {kind} backbone "
            f"(got {type(backbone).__name__})"
        )
    return backbone
