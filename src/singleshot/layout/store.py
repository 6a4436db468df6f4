"""Cached layout decisions: one small JSON file per trial setting in the singleshot cache.

A decision is valid for one machine and one workload, so its key holds: the CPU's model
and instruction-set flags and the kernels PyTorch and oneDNN are allowed to use
(``ATEN_CPU_CAPABILITY``, ``DNNL_MAX_CPU_ISA`` change them), the device (a GPU's name),
the thread count, the torch version, the model's structure (its ``repr``: layer types,
channels, kernel sizes; not its weights), the trial input's shape and dtype, autocast,
and train or inference. The file is ``layout-<16 hex digits of the key's hash>.json``
beside the built Winograd kernels, holding the key itself (readable, and checked on
reading) and the decision; it is written atomically (a temporary file renamed), so a
reader never sees half of one. A file that cannot be read is ignored with a warning and
rewritten by the next trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cache import (
    cached_files,
    cpu_identity,
    cpu_name,
    keyed_path,
    read_keyed,
    remove_cached,
    write_keyed,
)
from .decision import LayoutDecision

__all__ = [
    "PATTERN",
    "cached_decision",
    "clear_decisions",
    "decision_key",
    "decision_path",
    "device_name",
    "list_decisions",
    "store_decision",
]

PATTERN = "layout-*.json"
VERSION = 1


def device_name(device: torch.device) -> str:
    """The device a trial runs on, for keys and messages: the CPU's model name, or the GPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name() if device.type == "cpu" else device.type


def decision_key(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    training: bool,
    dtype: torch.dtype,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """What a decision for this trial depends on, as plain JSON data (see the module docstring)."""
    return {
        "version": VERSION,
        "mode": "train" if training else "inference",
        "model": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "input": [int(n) for n in input_shape],
        "dtype": str(dtype),
        "autocast": str(autocast_dtype) if autocast_dtype is not None else None,
        "device": f"{device.type}: {device_name(device)}",
        "cpu": hashlib.sha256(cpu_identity().encode()).hexdigest()[:16],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def decision_path(key: dict[str, Any]) -> Path:
    """The cache file for ``key`` (it may not exist)."""
    return keyed_path("layout", key)


def cached_decision(key: dict[str, Any]) -> LayoutDecision | None:
    """The decision cached for ``key`` (source "cached"), or None: no file, or an unreadable
    one (a warning names it and the reason; the next `store_decision` replaces it)."""
    path = decision_path(key)
    record = read_keyed(path, key, "decision", "layout decision")
    if record is None:
        return None
    try:
        decision = LayoutDecision.from_dict(record)
        if decision.seconds is None:
            raise ValueError("it holds no trial timings")
    except ValueError as error:
        warnings.warn(f"{path}: ignoring a corrupt cached layout decision ({error}); measuring again",
                      stacklevel=2)  # fmt: skip
        return None
    return dataclasses.replace(decision, source="cached", cache_file=str(path))


def store_decision(key: dict[str, Any], decision: LayoutDecision) -> Path | None:
    """Write ``decision`` for ``key`` atomically; the file, or None (with a warning) when the
    cache folder is not writable (the decision still holds for this process)."""
    record = {**decision.to_dict(), "cache_file": None}
    return write_keyed(decision_path(key), key, "decision", "layout decision", record)


def list_decisions() -> list[Path]:
    """The cached layout decisions, sorted by name (every machine and model seen)."""
    return cached_files(PATTERN)


def clear_decisions() -> list[Path]:
    """Delete the cached layout decisions (nothing else in the cache); returns what was deleted."""
    return remove_cached(PATTERN)
