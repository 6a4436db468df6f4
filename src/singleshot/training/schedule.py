"""Learning-rate schedules as pure functions of the iteration.

The learning rate at iteration ``t`` (0-based, the update about to be made) is
``base_lr * group_factor * warmup(t) * schedule(t)``. Being a function of ``t`` alone,
the schedule needs no state of its own beyond the iteration: resuming at ``t`` gives
the same rates as never stopping. (The one exception is opt-in: a cosine that follows
a time budget, `ScheduleConfig.follow_time_budget`, also takes the share of the budget
spent.)
"""

from __future__ import annotations

import bisect
import math

from torch.optim import Optimizer

from .config import ScheduleConfig

__all__ = ["lr_factor", "LRSchedule"]


def lr_factor(
    config: ScheduleConfig, iteration: int, total_iterations: int, time_progress: float = 0.0
) -> float:
    """Factor of the base learning rate for the update at ``iteration`` (0-based).

    - multistep: ``gamma ** (number of milestones <= iteration)`` (ssd.pytorch's rule:
      the rate drops for the update AT the milestone).
    - cosine: ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p = t / total_iterations``,
      or ``max(t / total_iterations, time_progress)`` when ``config.follow_time_budget``
      (``time_progress``: share of the time budget spent, in [0, 1]).
    - constant: 1.
    - warmup: times ``warmup_factor + (1 - warmup_factor) * t / warmup_iterations`` while
      ``t < warmup_iterations``.
    """
    if config.name == "multistep":
        factor = config.gamma ** bisect.bisect_right(config.milestones, iteration)
    elif config.name == "cosine":
        progress = iteration / max(total_iterations, 1)
        if config.follow_time_budget:
            progress = max(progress, time_progress)
        progress = min(progress, 1.0)
        factor = config.min_factor + (1 - config.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif config.name == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {config.name!r}")
    if iteration < config.warmup_iterations:
        alpha = iteration / config.warmup_iterations
        factor *= config.warmup_factor + (1 - config.warmup_factor) * alpha
    return factor


class LRSchedule:
    """Sets each parameter group's rate to ``group["initial_lr"] * lr_factor(t)``.

    ``initial_lr`` is recorded per group when the schedule is created (it already holds
    per-group multipliers such as the bias factor) and is part of the optimizer's own
    state dict, so a resumed optimizer keeps it.
    """

    def __init__(self, optimizer: Optimizer, config: ScheduleConfig, total_iterations: int) -> None:
        self.optimizer = optimizer
        self.config = config
        self.total_iterations = total_iterations
        self.iteration = 0
        self.time_progress = 0.0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(self, iteration: int | None = None) -> float:
        iteration = self.iteration if iteration is None else iteration
        return lr_factor(self.config, iteration, self.total_iterations, self.time_progress)

    def set_iteration(self, iteration: int, time_progress: float = 0.0) -> None:
        """Apply the rates of the update at ``iteration`` (``time_progress``: see `lr_factor`)."""
        self.iteration = iteration
        self.time_progress = time_progress
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.set_iteration(int(state["iteration"]))
