"""Learning-rate schedules as pure functions of the iteration.

The learning rate at iteration ``t`` (0-based, the update about to be made) is
``base_lr * group_factor * warmup(t) * schedule(t)``. Being a function of ``t`` alone,
the schedule needs no state of its own beyond the iteration: resuming at ``t`` gives
the same rates as never stopping. (The one exception is opt-in: a cosine that follows
a time budget, `ScheduleConfig.follow_time_budget`, also takes the share of the budget
spent, from the moment the run falls behind the budget's pace; see `LRSchedule`.)
"""

from __future__ import annotations

import bisect
import math

from torch.optim import Optimizer

from .config import ScheduleConfig

__all__ = ["lr_factor", "LRSchedule", "PACE_SHARE"]

# The clock is consulted only once this share of the budget is spent: before that, start-up
# costs (the first batches, kernel selection) make the pace look slower than it is.
PACE_SHARE = 0.05


def lr_factor(
    config: ScheduleConfig, iteration: int, total_iterations: int, time_progress: float = 0.0
) -> float:
    """Factor of the base learning rate for the update at ``iteration`` (0-based).

    - multistep: ``gamma ** (number of milestones <= iteration)`` (ssd.pytorch's rule:
      the rate drops for the update AT the milestone).
    - cosine: ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p = t / total_iterations``,
      or ``max(t / total_iterations, time_progress)`` when ``config.follow_time_budget``
      (``time_progress``: share of the time budget spent, in [0, 1]; `LRSchedule` passes
      it only once the budget binds, and 0 before).
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

    With ``config.follow_time_budget`` the schedule starts on the iterations alone, and
    turns to the clock (``follows_clock_from`` = that iteration; from then on the cosine's
    progress is the larger of the two shares) at the first update where at least
    `PACE_SHARE` of the budget is spent and the share of the budget spent exceeds the share
    of the iterations done: the run is behind the pace that would finish in time, so the
    budget binds. A run that keeps ahead of that pace never depends on the clock, and is
    reproducible bit for bit; one whose budget binds is not, and says so.
    """

    def __init__(self, optimizer: Optimizer, config: ScheduleConfig, total_iterations: int) -> None:
        self.optimizer = optimizer
        self.config = config
        self.total_iterations = total_iterations
        self.iteration = 0
        self.time_progress = 0.0
        self.follows_clock_from: int | None = None
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(self, iteration: int | None = None) -> float:
        iteration = self.iteration if iteration is None else iteration
        return lr_factor(self.config, iteration, self.total_iterations, self.time_progress)

    def budget_binds(self, iteration: int, time_progress: float) -> bool:
        """Whether the update at ``iteration`` finds the run behind the time budget's pace."""
        iteration_progress = iteration / max(self.total_iterations, 1)
        return time_progress >= PACE_SHARE and time_progress > iteration_progress

    def set_iteration(self, iteration: int, time_progress: float = 0.0) -> bool:
        """Apply the rates of the update at ``iteration``.

        ``time_progress``: the share of the time budget spent, in [0, 1] (0 without one).
        Returns True when this call turned the schedule to the clock (see the class).
        """
        turned = (
            self.config.follow_time_budget
            and self.follows_clock_from is None
            and self.budget_binds(iteration, time_progress)
        )
        if turned:
            self.follows_clock_from = iteration
        self.iteration = iteration
        self.time_progress = time_progress if self.follows_clock_from is not None else 0.0
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return turned

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "follows_clock_from": self.follows_clock_from}

    def load_state_dict(self, state: dict) -> None:
        self.follows_clock_from = state.get("follows_clock_from")
        self.set_iteration(int(state["iteration"]))
