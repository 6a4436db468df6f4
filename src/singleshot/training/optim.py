"""Optimizer construction with the paper's per-parameter rules available.

Parameters fall in three groups:

- ``weights``: convolution weights; base rate, ``weight_decay``.
- ``biases``: convolution biases; rate x ``bias_lr_factor``, ``bias_weight_decay``
  (Caffe SSD trained biases at twice the rate and without decay; ssd.pytorch, lufficc/SSD
  and torchvision's reference script dropped both, and that remains the default here).
- ``norm``: BatchNorm weights/biases and the L2Norm scale; base rate, ``norm_weight_decay``
  (Caffe SSD did not decay the conv4_3 scale). Besides torch's normalisation layers, any
  module whose class sets ``is_norm = True`` (as `singleshot.models.vgg.L2Norm` does) counts,
  so a new part needs no entry here.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import OptimizerConfig

__all__ = ["parameter_groups", "build_optimizer"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or getattr(type(module), "is_norm", False) is True


def parameter_groups(model: nn.Module, config: OptimizerConfig) -> list[dict]:
    """Split the trainable parameters into the weights / biases / norm groups (empty ones left out).

    Each group dict has ``params``, ``lr``, ``weight_decay`` and ``name``.
    """
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "biases": [], "norm": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if _is_norm(module):
                groups["norm"].append(param)
            elif name == "bias":
                groups["biases"].append(param)
            else:
                groups["weights"].append(param)
    decay = config.weight_decay
    settings = {
        "weights": (config.lr, decay),
        "biases": (
            config.lr * config.bias_lr_factor,
            decay if config.bias_weight_decay is None else config.bias_weight_decay,
        ),
        "norm": (config.lr, decay if config.norm_weight_decay is None else config.norm_weight_decay),
    }
    return [
        {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
        for name, params in groups.items()
        if params
    ]


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW (beta1 = ``momentum``) over `parameter_groups`."""
    config.validate()
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
