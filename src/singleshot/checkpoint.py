"""Self-describing checkpoints: everything needed to rebuild the model, and nothing executable.

A checkpoint is a dict saved with `torch.save` and read back with
``torch.load(..., weights_only=True)``, so loading never runs code from the file::

    {
        "format": "singleshot",
        "version": 1,
        "model": {"preset": str | None, "num_classes": int, "class_names": list[str] | None,
                  "prior_config": dict, "image_mean": [r, g, b],
                  "category_ids": list[int] | None,    # the training set's id per label (COCO)
                  # optional (absent in older files: 1.0, today's defaults, the preset's parts):
                  "image_std": [r, g, b], "postprocess": dict,
                  "parts": {"backbone" | "extras" | "head": {"name": str, "config": dict}}},
        "state_dict": {name: Tensor},
        "training": {...},        # optional: optimizer, scheduler, iteration, RNG states...
    }

A model with a ``preset`` name is rebuilt from that preset, its parts taking the settings
the file records for them when it records the preset's part names (else they are
informative); a model without one (built from parts, `singleshot.models.build_ssd` or
``SSD(...)``) from its ``parts``, whose names resolve to the built-in part classes, those
the presets use, or a user's own passed as ``parts={"name": cls}``. A name that
resolves to nothing is refused: nothing is ever imported because a file names it.

Files are written atomically (temporary file in the same folder, fsync, rename), so a
crash while saving never leaves a truncated checkpoint in place of a good one.

When the ``safetensors`` package is installed, a path ending in ``.safetensors`` is
written and read in that format instead: the weights as tensors and the ``model``
description as JSON in the file's string metadata (no training state). Loading
either format never runs code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_write, is_safetensors_file, read_safetensors, torch_load_data, torch_save_to
from .models.build import build_ssd, describe
from .models.spec import Part, SSDSpec, read_fields
from .models.ssd import SSD

__all__ = [
    "CHECKPOINT_FORMAT",
    "model_metadata",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_file",
    "model_from_checkpoint",
    "load",
    "atomic_save",
    "atomic_write",
    "with_recorded_parts",
]

CHECKPOINT_FORMAT = "singleshot"
CHECKPOINT_VERSION = 1


def model_metadata(model: SSD) -> dict[str, Any]:
    """What `model_from_checkpoint` needs to rebuild ``model``'s architecture.

    Raises:
        ValueError: a part of the model cannot describe itself (no own ``part_name`` or
            ``config()``; see `singleshot.models.spec`), or the model is an inference-only
            copy (`SSD.optimize_for_inference`), whose folded weights no checkpoint describes.
    """
    if getattr(model, "optimizations", None) is not None:
        raise ValueError(
            "this model is an inference-only copy made by optimize_for_inference (its BatchNorm "
            "folded into the convolutions); save the model it was made from"
        )
    try:
        spec = describe(model)
        description = spec.to_dict()
    except ValueError as error:
        raise ValueError(f"this model cannot be checkpointed: {error}") from None
    parts = description.pop("parts")
    return {
        "preset": model.preset,
        **description,
        "category_ids": getattr(model, "category_ids", None),
        "parts": parts,
    }


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    return atomic_write(path, lambda handle: torch_save_to(obj, handle))


def save_checkpoint(path: str | os.PathLike, model: SSD, training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally the training state) as a singleshot checkpoint, atomically.

    A ``.safetensors`` path writes the safetensors format (needs the ``safetensors`` package;
    it holds no training state).
    """
    try:
        meta = model_metadata(model)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if Path(path).suffix == ".safetensors":
        if training is not None:
            raise ValueError(f"{path}: safetensors checkpoints hold no training state; use a .pt file")
        return _save_safetensors(path, state, meta)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": meta,
        "state_dict": state,
    }
    if training is not None:
        checkpoint["training"] = training
    return atomic_save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a singleshot checkpoint (never executing code from the file).

    ``path`` may also name published weights (``"ssd300_vgg16_coco"``, see
    `singleshot.weights.published`): they are fetched, verified and converted once, and the
    cached checkpoint is read.

    Raises:
        ValueError: the file is missing (and no published weights have that name), truncated,
            not a checkpoint, refused by the safe unpickler (it holds objects other than tensors
            and plain containers), or a checkpoint of an unknown format version. The message
            names the file.
    """
    path = checkpoint_file(path)
    if is_safetensors_file(path):
        checkpoint = _load_safetensors(path, map_location)
    else:
        checkpoint = torch_load_data(path, map_location)
    validate_checkpoint(checkpoint, path)
    return checkpoint


def checkpoint_file(source: str | os.PathLike) -> Path:
    """The file ``source`` names: a path, or the cached checkpoint of published weights of that
    name (fetched and converted on first use). ValueError when it is neither."""
    path = Path(source)
    if path.is_file():
        return path
    if isinstance(source, str):
        # published weights are a layer above checkpoints: imported only for a missing file
        from .weights.published import is_published_name, published_checkpoint
        from .weights.registry import published_names

        if is_published_name(source):
            return published_checkpoint(source)
        if not path.suffix and len(path.parts) == 1:  # a name rather than a path
            known = ", ".join(published_names("detector"))
            raise ValueError(f"{path}: no such checkpoint file, nor the name of published weights ({known})")
    raise ValueError(f"{path}: no such checkpoint file")


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


def _model_spec(meta: dict[str, Any], parts: dict[str, type] | None) -> SSDSpec:
    """The `SSDSpec` a checkpoint's model description asks for, checked (ValueError)."""
    from .presets import part_classes, preset_spec

    preset = meta["preset"]
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"preset must be a name or null, got {preset!r}")
    ids = meta.get("category_ids")
    if ids is not None and not (isinstance(ids, list) and all(_is_count(i) for i in ids)):
        raise ValueError(f"category_ids must be a list of integers, got {ids!r}")
    fields = read_fields(meta)
    if preset is None:
        if meta.get("parts") is None:
            raise ValueError("a model without a preset must record its parts")
        return SSDSpec.from_dict(meta, part_classes(parts))
    spec = preset_spec(
        preset,
        num_classes=fields["num_classes"],
        class_names=fields["class_names"],
        prior_config=fields["prior_config"],
    )
    return with_recorded_parts(spec, meta.get("parts")).replace(
        image_mean=fields["image_mean"], image_std=fields["image_std"], postprocess=fields["postprocess"]
    )


def with_recorded_parts(spec: SSDSpec, recorded: Any) -> SSDSpec:
    """The preset's parts with the settings a file records for them (e.g. a MobileNetV3
    backbone's full tail), when it records the same three part names; else ``spec``."""
    if not isinstance(recorded, dict):
        return spec
    parts = {role: getattr(spec, role) for role in ("backbone", "extras", "head")}
    found = {role: recorded.get(role) for role in parts}
    if not all(isinstance(f, dict) and f.get("name") == parts[r].name for r, f in found.items()):
        return spec
    return spec.replace(
        **{role: Part.from_dict(found[role], {part.name: part.cls}, role) for role, part in parts.items()}
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def model_from_checkpoint(
    checkpoint: dict[str, Any],
    path: str | os.PathLike = "checkpoint",
    parts: dict[str, type] | None = None,
) -> SSD:
    """Rebuild the model a (validated) checkpoint describes and load its weights strictly.

    ``parts``: the user's own part classes by the name the file records (see `load`).

    The architecture is first built without memory (on the "meta" device) and the file's
    weights checked against it, so a corrupt description (a huge class count, a malformed
    default-box layout) is refused before anything is allocated.
    """
    meta = checkpoint["model"]
    try:
        spec = _model_spec(meta, parts)
        with torch.device("meta"):
            blueprint = build_ssd(spec, preset=meta["preset"])
        if blueprint.priors.shape[0] > _MAX_PRIORS:
            raise ValueError(f"its prior_config asks for {blueprint.priors.shape[0]} default boxes")
    except _BUILD_ERRORS as error:
        raise ValueError(f"{path}: cannot rebuild the model it describes: {error}") from None
    if meta["preset"] is not None:
        where = f"preset {meta['preset']!r} with {meta['num_classes']} classes"
    else:
        names = "/".join(part.name for part in (spec.backbone, spec.extras, spec.head))
        where = f"parts {names} with {meta['num_classes']} classes"
    try:
        _check_weights(checkpoint["state_dict"], blueprint.state_dict(), where)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    model = build_ssd(spec, preset=meta["preset"])
    category_ids = meta.get("category_ids")
    if category_ids is not None and len(category_ids) == model.num_classes:
        model.category_ids = list(category_ids)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit {where}: {error}") from None
    return model


def load(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", parts: dict[str, type] | None = None
) -> SSD:
    """A ready model (in eval mode, with ``class_names``) from a singleshot checkpoint, or from
    published weights by name: ``load("ssd300_vgg16_coco")`` (`singleshot models` lists them;
    downloaded, verified and converted once into the cache, see `singleshot.weights.published`).

    ``map_location``: the device the model lands on ("cpu", "cuda", "cuda:1", ...). Its
    weights take the memory layout its forward feeds them (channels-last unless
    ``model.channels_last`` is off), so that no convolution converts them on every call.

    ``parts``: part classes of your own, by the name the checkpoint records (their
    ``part_name``), e.g. ``load("mine.pt", parts={"mynet": MyBackbone})``; the built-in
    parts and those of the presets are always known.
    """
    path = checkpoint_file(path)
    checkpoint = load_checkpoint(path, map_location="cpu")
    model = model_from_checkpoint(checkpoint, path, parts).to(map_location)
    if model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
