"""Training SSD: configuration and recipes, the loop (single process or DDP), the demo.

>>> from singleshot.training import load_recipe, train
>>> config = load_recipe("ssd300_voc0712", ["data=VOCdevkit/VOC0712", "out=runs/voc"])
>>> result = train(config)
"""

from .config import OptimizerConfig, ScheduleConfig, TrainConfig
from .data import BadSampleError
from .hooks import HookBase
from .recipes import apply_overrides, available_recipes, load_recipe
from .trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = [
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "available_recipes",
    "load_recipe",
    "BadSampleError",
    "HookBase",
    "NonFiniteLossError",
    "Trainer",
    "TrainResult",
    "train",
]
