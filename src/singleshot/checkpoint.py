"""Self-describing checkpoints: everything needed to rebuild the model, and nothing executable.

A checkpoint is a dict saved with `torch.save` and read back with
``torch.load(..., weights_only=True)``, so loading never runs code from the file::

    {
        "format": "singleshot",
        "version": 1,
        "model": {"preset": str, "num_classes": int, "class_names": list[str] | None,
                  "prior_config": dict, "image_mean": [r, g, b],
                  "category_ids": list[int] | None},   # the training set's id per label (COCO)
        "state_dict": {name: Tensor},
        "training": {...},        # optional: optimizer, scheduler, iteration, RNG states...
    }

Files are written atomically (temporary file in the same folder, fsync, rename), so a
crash while saving never leaves a truncated checkpoint in place of a good one.

When the ``safetensors`` package is installed, a path ending in ``.safetensors`` is
written and read in that format instead: the weights as tensors and the ``model``
description as JSON in the file's string metadata (no training state). Loading
either format never runs code from the file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .models.ssd import SSD
from .priors import PriorConfig
from .weights.io import is_safetensors_file, read_safetensors, torch_load_data

__all__ = [
    "CHECKPOINT_FORMAT",
    "model_metadata",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "load",
    "atomic_save",
    "atomic_write",
]

CHECKPOINT_FORMAT = "singleshot"
CHECKPOINT_VERSION = 1


def model_metadata(model: SSD) -> dict[str, Any]:
    """What `model_from_checkpoint` needs to rebuild ``model``'s architecture."""
    if model.preset is None:
        raise ValueError("only models built from a preset (singleshot.build_model) can be checkpointed")
    return {
        "preset": model.preset,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names) if model.class_names is not None else None,
        "prior_config": model.prior_config.to_dict(),
        "image_mean": list(model.image_mean),
        "category_ids": getattr(model, "category_ids", None),
    }


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a failure or crash at any point leaves the previous file (if any) as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(path: str | os.PathLike, model: SSD, training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally the training state) as a singleshot checkpoint, atomically.

    A ``.safetensors`` path writes the safetensors format (needs the ``safetensors`` package;
    it holds no training state).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if Path(path).suffix == ".safetensors":
        if training is not None:
            raise ValueError(f"{path}: safetensors checkpoints hold no training state; use a .pt file")
        return _save_safetensors(path, state, model_metadata(model))
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_metadata(model),
        "state_dict": state,
    }
    if training is not None:
        checkpoint["training"] = training
    return atomic_save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a singleshot checkpoint (never executing code from the file).

    Raises:
        ValueError: the file is missing, truncated, not a checkpoint, refused by the safe
            unpickler (it holds objects other than tensors and plain containers), or a
            checkpoint of an unknown format version. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    if is_safetensors_file(path):
        checkpoint = _load_safetensors(path, map_location)
    else:
        checkpoint = torch_load_data(path, map_location)
    validate_checkpoint(checkpoint, path)
    return checkpoint


def _save_safetensors(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    try:
        from safetensors.torch import save
    except ImportError:
        raise ValueError(
            f"{path}: writing safetensors files needs the `safetensors` package (pip install safetensors)"
        ) from None
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "model": json.dumps(meta)}
    tensors = {k: v.contiguous() for k, v in state.items()}
    return atomic_write(path, lambda handle: handle.write(save(tensors, metadata=metadata)))


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not a singleshot checkpoint (a safetensors file without singleshot metadata)"
        )
    try:
        meta = json.loads(metadata.get("model", ""))
        version = int(metadata.get("version", "0"))
    except ValueError as error:
        raise ValueError(f"{path}: corrupt singleshot metadata: {error}") from None
    state = {k: v.to(map_location) for k, v in tensors.items()}
    return {"format": CHECKPOINT_FORMAT, "version": version, "model": meta, "state_dict": state}


def validate_checkpoint(checkpoint: Any, path: str | os.PathLike = "checkpoint") -> None:
    """Raise ValueError naming ``path`` unless ``checkpoint`` has the singleshot layout."""
    if not isinstance(checkpoint, dict) or not _equals(checkpoint.get("format"), CHECKPOINT_FORMAT):
        hint = ""
        if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            hint = " (it looks like a bare state dict: convert it with `singleshot convert`)"
        raise ValueError(f"{path}: not a singleshot checkpoint{hint}")
    version = checkpoint.get("version")
    if not _equals(version, CHECKPOINT_VERSION):
        raise ValueError(f"{path}: checkpoint format version {version!r} is not supported (expected 1)")
    meta = checkpoint.get("model")
    required = ("preset", "num_classes", "prior_config", "image_mean")
    if not isinstance(meta, dict) or any(key not in meta for key in required):
        raise ValueError(f"{path}: checkpoint lacks the model description ({', '.join(required)})")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: checkpoint has no state_dict")


def _equals(value: Any, expected: str | int) -> bool:
    return type(value) is type(expected) and value == expected


# Default boxes a checkpoint may ask for (SSD512 has 24,564): more is a corrupt prior_config.
_MAX_PRIORS = 1_000_000
_BUILD_ERRORS = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    IndexError,
    OverflowError,
    ZeroDivisionError,
)


def _model_arguments(meta: dict[str, Any]) -> dict[str, Any]:
    """`build_model`'s arguments from a checkpoint's model description, checked."""
    num_classes, names, mean = meta["num_classes"], meta.get("class_names"), meta["image_mean"]
    if not isinstance(meta["preset"], str):
        raise ValueError(f"preset must be a name, got {meta['preset']!r}")
    if not _is_count(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"class_names must be a list of names, got {names!r}")
    if not (isinstance(mean, (list, tuple)) and len(mean) == 3 and all(_is_finite(m) for m in mean)):
        raise ValueError(f"image_mean must be three numbers, got {mean!r}")
    if not isinstance(meta["prior_config"], dict):
        raise ValueError(f"prior_config must be a mapping, got {meta['prior_config']!r}")
    ids = meta.get("category_ids")
    if ids is not None and not (isinstance(ids, list) and all(_is_count(i) for i in ids)):
        raise ValueError(f"category_ids must be a list of integers, got {ids!r}")
    return {
        "name": meta["preset"],
        "num_classes": num_classes,
        "class_names": names,
        "prior_config": PriorConfig.from_dict(meta["prior_config"]),
    }


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_weights(state: dict[str, Any], expected: dict[str, torch.Tensor], where: str) -> None:
    """Raise ValueError unless ``state`` holds a tensor of the expected shape for every name."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and not _fits(state[k], expected[k])]
    if missing or unexpected or wrong:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape or type", wrong))
        parts = [f"{label}: {', '.join(keys[:5])}" for label, keys in found if keys]
        raise ValueError(f"weights do not fit {where} ({'; '.join(parts)})")


def _fits(value: Any, expected: torch.Tensor) -> bool:
    if not isinstance(value, torch.Tensor) or value.shape != expected.shape or value.is_complex():
        return False
    return value.dtype == expected.dtype or (value.is_floating_point() and expected.is_floating_point())


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint") -> SSD:
    """Rebuild the model a (validated) checkpoint describes and load its weights strictly.

    The architecture is first built without memory (on the "meta" device) and the file's
    weights checked against it, so a corrupt description (a huge class count, a malformed
    default-box layout) is refused before anything is allocated.
    """
    from .presets import build_model

    meta = checkpoint["model"]
    try:
        arguments = _model_arguments(meta)
        with torch.device("meta"):
            blueprint = build_model(**arguments)
        if blueprint.priors.shape[0] > _MAX_PRIORS:
            raise ValueError(f"its prior_config asks for {blueprint.priors.shape[0]} default boxes")
    except _BUILD_ERRORS as error:
        raise ValueError(f"{path}: cannot rebuild the model it describes: {error}") from None
    where = f"preset {meta['preset']!r} with {meta['num_classes']} classes"
    try:
        _check_weights(checkpoint["state_dict"], blueprint.state_dict(), where)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    model = build_model(**arguments)
    model.image_mean = tuple(float(m) for m in meta["image_mean"])
    category_ids = meta.get("category_ids")
    if category_ids is not None and len(category_ids) == model.num_classes:
        model.category_ids = list(category_ids)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit {where}: {error}") from None
    return model


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SSD:
    """A ready model (in eval mode, with ``class_names``) from a singleshot checkpoint.

    ``map_location``: the device the model lands on ("cpu", "cuda", "cuda:1", ...). Its
    weights take the memory layout its forward feeds them (channels-last unless
    ``model.channels_last`` is off), so that no convolution converts them on every call.
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    model = model_from_checkpoint(checkpoint, path).to(map_location)
    if model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
