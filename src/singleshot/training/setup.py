"""Building the model a run starts from: fresh, on ImageNet backbone weights, or from a detector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..models.ssd import SSD
from ..presets import build_model
from ..priors import PriorConfig
from .config import TrainConfig
from .data import Transform

__all__ = [
    "build_training_model",
    "init_from_detector",
    "freeze_batch_norm",
    "resolve_amp",
    "default_transform",
    "default_evaluator",
    "Evaluator",
]

Evaluator = Callable[..., dict[str, Any]]


def build_training_model(config: TrainConfig, class_names: list[str]) -> SSD:
    """The model of a new run: preset ``config.model`` for ``class_names`` (index 0 = background).

    Initialised with the paper's scheme under ``config.seed``, then overwritten by
    ``config.backbone_weights`` (VGG16 ImageNet weights) and/or ``config.init_from`` (a
    trained singleshot detector) when given.
    """
    torch.manual_seed(config.seed)
    prior_config = None
    source = None
    if config.init_from:
        source = load_checkpoint(config.init_from)
        if source["model"]["preset"] != config.model:
            raise ValueError(
                f"{config.init_from}: a {source['model']['preset']!r} detector cannot initialise "
                f"a {config.model!r} model"
            )
        prior_config = PriorConfig.from_dict(source["model"]["prior_config"])
    model = build_model(
        config.model, class_names=list(class_names), prior_clip=config.prior_clip, prior_config=prior_config
    )
    if config.backbone_weights:
        from ..weights import load_vgg16_backbone

        load_vgg16_backbone(model, config.backbone_weights)
    if source is not None:
        init_from_detector(model, source["state_dict"], str(config.init_from))
    return model


def init_from_detector(model: SSD, state_dict: dict[str, torch.Tensor], where: str = "checkpoint") -> list:
    """Copy a trained detector's weights into ``model`` for fine-tuning on another class set.

    Every tensor whose name and shape match is copied: backbone, extras and the box
    regression heads (class-agnostic in SSD). The classification heads are kept as
    initialised when the class count differs. Returns the names left at their
    initial values. Raises ValueError (naming ``where``) if a non-head tensor is missing
    or has another shape: that is a different architecture.
    """
    own = model.state_dict()
    kept: list[str] = []
    copied = {}
    for name, tensor in own.items():
        other = state_dict.get(name)
        if other is not None and other.shape == tensor.shape:
            copied[name] = other
        elif name.startswith("head.conf."):
            kept.append(name)
        else:
            found = "missing" if other is None else f"shape {tuple(other.shape)}"
            raise ValueError(f"{where}: {name} ({tuple(tensor.shape)}) does not fit: {found}")
    model.load_state_dict(copied, strict=False)
    return kept


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and not updated)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``mode`` ("none", "auto", "bf16", "fp16") on ``device``.

    "auto": bf16 where the GPU computes it natively (Ampere and later), else fp16 (with the
    GradScaler). Pre-Ampere GPUs (V100, T4) only emulate bf16, slowly, so they get fp16;
    `torch.cuda.is_bf16_supported` counts emulation unless told not to.
    """
    if device.type != "cuda" or mode == "none":
        return None
    if mode == "auto":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def default_transform(model: SSD, options: dict[str, Any]) -> Transform:
    from ..data import SSDAugmentation

    return SSDAugmentation(model.image_size, model.image_mean, **options)


def default_evaluator(model, dataset, metric, batch_size, device, progress) -> dict[str, Any]:
    from ..evaluation.run import evaluate_model

    return evaluate_model(
        model, dataset, metric=metric, batch_size=batch_size, device=device, progress=progress
    )
