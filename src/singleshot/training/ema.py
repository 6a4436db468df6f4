"""An exponential moving average (EMA) of the weights, evaluated and saved in place of the model.

After every optimizer update ``u = 1, 2, ...`` each parameter's average moves towards the
trained value::

    d(u) = decay * (1 - exp(-u / tau))        (tau = 0: d(u) = decay, a constant)
    ema  = d(u) * ema + (1 - d(u)) * weight

The warm-up factor ``1 - exp(-u / tau)`` is the form YOLOv5's ``ModelEMA`` uses (there
with decay 0.9999, tau 2000): early averages follow the fast-changing weights closely
instead of clinging to the initialisation. Buffers (BatchNorm running statistics and
counters) are copied from the trained model at each update, not averaged. Skipped steps
(non-finite loss) are not updates.

With the hook on, ``best.pt`` / ``last.pt`` hold the average as the model's ``state_dict``
(what `singleshot.load` and evaluation use); the trained (raw) weights and the update
count are in the training state, under ``training["ema"]``, so ``--resume`` continues
the raw model and its average exactly.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .hooks import HookBase

if TYPE_CHECKING:
    from ..models.ssd import SSD

__all__ = ["EMAHook", "ema_decay_at"]


def ema_decay_at(updates: int, decay: float, tau: float) -> float:
    """The decay of update number ``updates`` (1 for the first): ``decay * (1 - exp(-updates / tau))``,
    or ``decay`` when ``tau`` is 0."""
    if tau == 0:
        return decay
    return decay * (1.0 - math.exp(-updates / tau))


class EMAHook(HookBase):
    """Keep an EMA of the trained model's parameters and make it ``trainer.output_model``.

    Args:
        decay: the decay the warm-up tends to, in (0, 1) (e.g. 0.9998).
        tau: warm-up time constant in updates (0: constant decay).
    """

    state_key = "ema"

    def __init__(self, decay: float, tau: float = 2000.0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        if tau < 0:
            raise ValueError(f"ema tau must be >= 0, got {tau}")
        self.decay, self.tau = decay, tau
        self.updates = 0
        self.ema: SSD | None = None

    def _start(self) -> None:
        """Take the average's first value from the model (its initial, or resumed averaged, weights)."""
        if self.ema is None:
            self.ema = copy.deepcopy(self.trainer.model).eval().requires_grad_(False)
            self.trainer.output_model = self.ema

    def before_train(self) -> None:
        self._start()

    def after_step(self) -> None:
        if self.trainer.step_losses is None:  # a skipped step changed nothing
            return
        self.updates += 1
        self.update(self.trainer.model, ema_decay_at(self.updates, self.decay, self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module, d: float) -> None:
        """``ema = d * ema + (1 - d) * model`` for the parameters; buffers copied."""
        assert self.ema is not None
        for average, weight in zip(self.ema.parameters(), model.parameters()):
            average.mul_(d).add_(weight.detach() * (1 - d))
        for buffer, value in zip(self.ema.buffers(), model.buffers()):
            buffer.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        raw = {k: v.detach().cpu() for k, v in self.trainer.model.state_dict().items()}
        return {"updates": self.updates, "raw_state_dict": raw}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The checkpoint's model weights (already in trainer.model) are the average.
        self._start()
        self.trainer.model.load_state_dict(state["raw_state_dict"])
        self.updates = int(state["updates"])
