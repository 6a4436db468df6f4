"""Reading foreign weight files safely: data only, never code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

# the neutral file readers, re-exported here where they used to live
from ..fileio import is_safetensors_file, read_safetensors, torch_load_data

__all__ = ["read_state_dict", "as_state_dict", "is_safetensors_file", "read_safetensors", "torch_load_data"]


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
