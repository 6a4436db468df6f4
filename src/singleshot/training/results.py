"""What a training run reports back: its result, the non-finite-loss error, per-window sums."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainResult", "NonFiniteLossError", "StepWindow"]


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss stopped the run; the last checkpoint on disk is the last good state."""

    def __init__(self, iteration: int, losses: dict[str, float], image_ids: list[str]) -> None:
        self.iteration = iteration
        self.losses = losses
        self.image_ids = image_ids
        terms = ", ".join(f"{k}={v}" for k, v in losses.items())
        super().__init__(
            f"non-finite loss at iteration {iteration} ({terms}); batch images: {', '.join(image_ids)}. "
            "The last checkpoint was left as it was; lower the learning rate, add clip_grad_norm, "
            "check these images' annotations, or use on_nonfinite=skip."
        )


@dataclass
class TrainResult:
    """What a run produced.

    ``model`` is the trained SSD (unwrapped from DDP); ``bad_samples`` the images skipped
    as unreadable (``on_bad_sample="skip"``, all processes); ``metrics`` the last evaluation's
    result (None if none ran); ``history`` the logged training records; ``elapsed_s`` the
    run's training time, across resumes; ``follows_clock_from``: the iteration from which
    a time budget bound the learning rate (None: the run did not depend on the clock);
    ``stop_reason``: why the run ended before its last iteration: "time_budget",
    "early_stopping", or the reason a hook gave `Trainer.stop` (None: it did not).
    With ``ema_decay`` set, ``model`` is the average of the weights (what the checkpoints hold).
    """

    out: Path
    iteration: int
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_map: float | None
    skipped_steps: int
    elapsed_s: float
    stopped_by_budget: bool
    follows_clock_from: int | None = None
    metrics: dict[str, Any] | None = None
    bad_samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    stop_reason: str | None = None


class StepWindow:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.loc = self.conf = 0.0
        self.counted = self.steps = 0
        self.seconds = self.data_s = 0.0

    def add(self, loc: float, conf: float) -> None:
        self.loc += loc
        self.conf += conf
        self.counted += 1

    def postfix(self, lr: float, batch_size: int) -> dict[str, str]:
        """Progress-bar fields: mean losses of the window, learning rate, images per second."""
        n = max(self.counted, 1)
        rate = batch_size * self.steps / self.seconds if self.seconds else 0.0
        return {
            "loss": f"{(self.loc + self.conf) / n:.3f}",
            "loc": f"{self.loc / n:.3f}",
            "conf": f"{self.conf / n:.3f}",
            "lr": f"{lr:.2e}",
            "img/s": f"{rate:.1f}",
        }
