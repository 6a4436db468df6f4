"""Early stopping: end the run when the evaluation mAP stops improving.

After each evaluation, the mAP improves when it exceeds the best so far by more than
``min_delta`` (the first evaluation always does). After ``patience`` evaluations in a row
without improvement the run stops: the stop is logged (``kind: early_stop`` in
``log.jsonl``), ``TrainResult.stop_reason`` is ``"early_stopping"``, ``last.pt`` is written.
Rank 0's evaluation decides; the decision reaches every process by an all-reduce.
"""

from __future__ import annotations

from typing import Any

from . import distributed
from .hooks import Evaluation, HookBase

__all__ = ["EarlyStopping"]


class EarlyStopping(HookBase):
    """Stop after ``patience`` evaluations without an mAP gain of more than ``min_delta``.

    Registered after the `Evaluation` hook, whose result it reads in the same step.
    """

    state_key = "early_stopping"

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"early stopping patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"early stopping min_delta must be >= 0, got {min_delta}")
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.bad_evaluations = 0

    def before_train(self) -> None:
        if self.trainer.val_dataset is None:
            raise ValueError("early stopping needs evaluations: give a validation set")
        self._evaluation = next(h for h in self.trainer.hooks if isinstance(h, Evaluation))

    def after_step(self) -> None:
        trainer = self.trainer
        if self._evaluation.evaluated_at != trainer.iteration:
            return
        stop = False
        if trainer.dist.is_main and trainer.metrics is not None:
            stop = self.observe(float(trainer.metrics["map"]), trainer.iteration)
        if distributed.all_max([float(stop)], trainer.device)[0] > 0 and trainer.stop_reason is None:
            trainer.stop("early_stopping")
            if trainer.dist.is_main:
                self._report()

    def _report(self) -> None:
        trainer = self.trainer
        trainer.logger.write({"kind": "early_stop", "iteration": trainer.iteration, "best_map": self.best,
                              "best_iteration": self.best_iteration, "patience": self.patience})  # fmt: skip
        trainer.logger.message(
            f"early stopping at iteration {trainer.iteration}: no mAP gain over {self.best:.4f} "
            f"(iteration {self.best_iteration}) in {self.patience} evaluations"
        )

    def observe(self, value: float, iteration: int) -> bool:
        """Count one evaluation's mAP; True when the patience is used up."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_iteration, self.bad_evaluations = value, iteration, 0
        else:
            self.bad_evaluations += 1
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_iteration": self.best_iteration,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_iteration = state["best"], state["best_iteration"]
        self.bad_evaluations = int(state["bad_evaluations"])
