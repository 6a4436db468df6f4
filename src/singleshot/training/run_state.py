"""A run's training state, the part of ``last.pt`` that `--resume` reads, and putting it back.

The state is plain data (tensors, numbers, strings, lists and dicts), so checkpoints
load with ``weights_only=True``: the iteration and sampler position, the optimizer,
schedule and gradient-scaler states, every RNG state, the best mAP so far, the chosen
memory format, the training time spent, and each stateful hook's state under its
``state_key``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .state import capture_rng_state

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["capture_run_state", "restore_run_state"]


def capture_run_state(trainer: Trainer) -> dict[str, Any]:
    """Everything `--resume` needs from ``trainer``, as plain data."""
    return {
        "iteration": trainer.iteration,
        "config": trainer.config.to_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "rng": capture_rng_state(),
        "sampler": {"position": trainer.position, "seed": trainer.config.seed},
        "skipped_steps": trainer.skipped,
        "bad_samples": trainer.bad_samples,
        "best_map": trainer.best_map,
        "best_iteration": trainer.best_iteration,
        "world_size": trainer.dist.world_size,
        "layout": trainer.layout.to_dict(),
        "elapsed_s": time.perf_counter() - trainer.clock_start,
        "hooks": {h.state_key: h.state_dict() for h in trainer.hooks if h.state_key is not None},
    }


def restore_run_state(trainer: Trainer, state: dict[str, Any], where: Any) -> None:
    """Put a checkpoint's training state (``state``, read from ``where``) back into ``trainer``.

    The RNG states are kept in ``trainer.rng_state`` and restored when the run starts, after
    the loader has drawn its worker seed as a fresh run does.
    """
    # The saved state brings momentum buffers; rates and decays follow the current config
    # (a resumed run may change them, e.g. --lr).
    optimizer = trainer.optimizer
    current = [(g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, (initial_lr, weight_decay) in zip(optimizer.param_groups, current):
        group["initial_lr"], group["weight_decay"] = initial_lr, weight_decay
    trainer.schedule.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.iteration = int(state["iteration"])
    trainer.position = int(state["sampler"]["position"])
    trainer.skipped = int(state.get("skipped_steps", 0))
    trainer.bad_samples = int(state.get("bad_samples", 0))
    trainer.best_map = state.get("best_map")
    trainer.best_iteration = state.get("best_iteration")
    trainer.rng_state = state.get("rng")
    trainer.elapsed_before = float(state.get("elapsed_s", 0.0))
    _restore_hooks(trainer, state.get("hooks", {}), where)


def _restore_hooks(trainer: Trainer, states: dict[str, Any], where: Any) -> None:
    keys = {hook.state_key for hook in trainer.hooks}
    if "ema" in states and "ema" not in keys:
        raise ValueError(
            f"{where}: the run keeps an EMA of its weights (its model weights are the average, the "
            "trained ones are in the training state): resume it with ema_decay set"
        )
    for hook in trainer.hooks:
        if hook.state_key is not None and hook.state_key in states:
            hook.load_state_dict(states[hook.state_key])
