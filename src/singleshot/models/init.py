"""Weight initialisers the parts share (each part's ``reset_parameters`` picks its own).

Both walk ``module.modules()`` in registration order, so a seeded build draws the same
random numbers in the same order whatever calls them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["he_normal_convs", "xavier_uniform_convs", "reset_batch_norms"]


def he_normal_convs(module: nn.Module) -> None:
    """He-normal (fan-out, ReLU) weights and zero biases for every Conv2d in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def xavier_uniform_convs(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Conv2d in ``module`` (the paper's extras/heads)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def reset_batch_norms(module: nn.Module) -> None:
    """BatchNorm layers back to weight 1, bias 0 and fresh running statistics (no random draws)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_parameters()
