"""Hooks: what the training loop does around each step, besides the step itself.

A hook subclasses `HookBase` and overrides any of its four methods; `Trainer` calls them
on every process, in the order the hooks are registered::

    before_train()                      once, before the first step of this call of `Trainer.run`
    for each step:
        before_step()                   ``trainer.iteration`` = steps done so far
        (the step: batch, forward, loss, backward, optimizer update)
        after_step()                    ``trainer.iteration`` counts the step just done
    after_train()                       once, when the loop ended without an exception

The trainer's state is visible as attributes: ``iteration``, ``end`` (where this call
stops), ``model`` (the trained SSD), ``output_model`` (the model evaluated and saved:
``model`` unless a hook such as `singleshot.training.ema.EMAHook` puts another in its
place), ``optimizer``, ``step_losses`` ((loc, conf) floats of the step, None if it was
skipped), ``metrics`` (the last evaluation's), ``logger`` (`RunLogger`), ``config``,
``dist``. A hook ends the run with ``trainer.stop(reason)``: the loop finishes the
current step's hooks, then evaluates and writes ``last.pt`` if they did not already.

A hook with state that ``--resume`` needs sets ``state_key`` and implements
``state_dict`` / ``load_state_dict`` (plain data: tensors, numbers, strings, lists, dicts);
the state is saved in the training state of every checkpoint.

The built-in hooks, in the order `Trainer` registers them (user hooks come after):
`NonFiniteGuard`, the EMA hook (``config.ema_decay``), `LogWriter`, `Evaluation`,
the early-stopping hook (``config.early_stop_patience``), `PeriodicCheckpoint`, `TimeBudget`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .results import NonFiniteLossError, StepWindow

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "HookBase",
    "NonFiniteGuard",
    "LogWriter",
    "Evaluation",
    "PeriodicCheckpoint",
    "TimeBudget",
    "default_hooks",
]


class HookBase:
    """Base class of training hooks: every method does nothing unless overridden.

    ``trainer`` is set when the hook is registered with a `Trainer`.
    """

    trainer: Trainer
    #: key of this hook's state in the checkpoint's training state (None: no state)
    state_key: str | None = None

    def before_train(self) -> None:
        """Called once before the first step."""

    def before_step(self) -> None:
        """Called before each step."""

    def after_step(self) -> None:
        """Called after each step (also after a skipped one: ``trainer.step_losses`` is None)."""

    def after_train(self) -> None:
        """Called once after the last step, unless the loop raised."""

    def state_dict(self) -> Any:
        """This hook's state for ``--resume`` (used when ``state_key`` is set)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore `state_dict`'s value; called while the `Trainer` is built, before `run`."""


class NonFiniteGuard(HookBase):
    """``config.on_nonfinite``: a step whose loss is NaN/inf somewhere raises or is skipped.

    Every process learns of it from the step's all-reduce, so all take the same branch.
    A skipped step leaves no trace: the BatchNorm running statistics its forward changed
    are put back from a snapshot taken before it.
    """

    def __init__(self) -> None:
        self._saved: dict[str, Tensor] | None = None

    def before_step(self) -> None:
        if self.trainer.config.on_nonfinite == "skip":
            model = self.trainer.model
            self._saved = {name: b.clone() for name, b in model.named_buffers() if name != "priors"}

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.nonfinite is None:
            return
        (loss_loc, loss_conf), targets = trainer.nonfinite
        step = trainer.iteration - 1
        losses = {"loss_loc": float(loss_loc.detach()), "loss_conf": float(loss_conf.detach())}
        image_ids = [str(t["image_id"]) for t in targets]
        if trainer.dist.distributed:  # report the whole global batch, and a process's non-finite terms
            gathered: list[Any] = [None] * trainer.dist.world_size
            torch.distributed.all_gather_object(gathered, (losses, image_ids))
            image_ids = [i for _, ids in gathered for i in ids]
            bad = [terms for terms, _ in gathered if not all(math.isfinite(v) for v in terms.values())]
            losses = bad[0] if bad else losses
        if trainer.config.on_nonfinite == "stop":
            raise NonFiniteLossError(step, losses, image_ids)
        trainer.skipped += 1
        if self._saved is not None:
            with torch.no_grad():
                for name, buffer in trainer.model.named_buffers():
                    if name in self._saved:
                        buffer.copy_(self._saved[name])
        trainer.logger.message(f"skipped iteration {step}: non-finite loss {losses}, images {image_ids}")


class LogWriter(HookBase):
    """Training records (``kind: train``) every ``config.log_every`` steps and at the last one,
    in ``log.jsonl``, TensorBoard and ``trainer.history``; the progress bar's fields."""

    def __init__(self) -> None:
        self.window = StepWindow()
        self._tick = 0.0

    def before_step(self) -> None:
        self._tick = time.perf_counter()

    def after_step(self) -> None:
        trainer, window = self.trainer, self.window
        window.data_s += trainer.data_seconds
        if trainer.step_losses is not None:
            window.add(*trainer.step_losses)
        window.steps += 1
        window.seconds += time.perf_counter() - self._tick
        if trainer.iteration % trainer.config.log_every == 0 or trainer.final_step:
            self._write()
        lr = trainer.optimizer.param_groups[0]["lr"]
        postfix = self.window.postfix(lr, trainer.config.batch_size) if self.window.steps else None
        trainer.logger.advance(1, postfix)

    def after_train(self) -> None:
        if self.window.steps:  # a hook stopped the run between two log lines
            self._write()

    def _write(self) -> None:
        record = train_record(self.trainer, self.window)
        self.trainer.history.append(record)
        self.trainer.logger.write(record)
        self.window = StepWindow()


def train_record(trainer: Trainer, window: StepWindow) -> dict[str, Any]:
    """The ``kind: train`` log record of a window of steps (losses averaged over all processes)."""
    losses = torch.tensor([window.loc, window.conf, float(window.counted)], dtype=torch.float64)
    if trainer.dist.distributed:
        losses = losses.to(trainer.device)
        torch.distributed.all_reduce(losses)
        losses = losses.cpu()
    loc, conf, counted = losses.tolist()
    counted = max(counted, 1.0)
    per_step = window.seconds / max(window.steps, 1)
    config = trainer.config
    return {
        "kind": "train",
        "iteration": trainer.iteration,
        "loss": (loc + conf) / counted,
        "loss_loc": loc / counted,
        "loss_conf": conf / counted,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "images_per_s": config.batch_size / per_step if per_step > 0 else 0.0,
        "data_wait_fraction": window.data_s / window.seconds if window.seconds > 0 else 0.0,
        "elapsed_s": time.perf_counter() - trainer.start,
        "eta_s": per_step * (config.iterations - trainer.iteration),
        "skipped": trainer.skipped,
        "bad_samples": trainer.bad_samples,
    }


class Evaluation(HookBase):
    """Evaluate ``trainer.output_model`` on the validation set every ``config.eval_every``
    steps and at the last one; write ``best.pt`` (rank 0) on a new best mAP.

    Under DDP every process calls the evaluator: the default one
    (`singleshot.training.setup.default_evaluator`) shares the images among them and
    returns rank 0's score on all, so that no process waits for another's whole
    evaluation in a collective (NCCL's watchdog ends a run whose collective waits longer
    than ``config.dist_timeout_minutes``). Rank 0's result is the one logged and kept.
    """

    def __init__(self) -> None:
        self.evaluated_at: int | None = None

    def after_step(self) -> None:
        trainer = self.trainer
        every = trainer.config.eval_every
        if (every and trainer.iteration % every == 0) or trainer.final_step:
            self.evaluate()

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.stop_reason is not None and self.evaluated_at != trainer.iteration:
            self.evaluate()  # a hook stopped the run after this hook's turn

    def evaluate(self) -> None:
        trainer = self.trainer
        if trainer.val_dataset is None:
            return
        self.evaluated_at = trainer.iteration
        trainer.metrics = self._run_evaluator()
        if not trainer.dist.is_main:
            return
        value = float(trainer.metrics["map"])
        if trainer.best_map is None or value > trainer.best_map:
            trainer.best_map, trainer.best_iteration = value, trainer.iteration
            trainer.best_checkpoint = trainer.save("best.pt")

    def _run_evaluator(self) -> dict[str, Any]:
        """Every process evaluates ``output_model`` (its share, with the default evaluator);
        rank 0 logs the result."""
        trainer, config = self.trainer, self.trainer.config
        metrics = trainer.evaluator(trainer.output_model, trainer.val_dataset, config.eval_metric,
                                    config.eval_batch_size, trainer.device, False)  # fmt: skip
        if trainer.dist.is_main:
            ap = {str(k): float(v) for k, v in metrics.get("ap", {}).items()}
            value, iteration = float(metrics["map"]), trainer.iteration
            trainer.logger.write({"kind": "eval", "iteration": iteration, "metric": config.eval_metric,
                                  "map": value, "ap": ap})  # fmt: skip
            trainer.logger.message(f"iteration {iteration}: {config.eval_metric} mAP {metrics['map']:.4f}")
        trainer.train_mode()
        return metrics


class PeriodicCheckpoint(HookBase):
    """Write ``last.pt`` (rank 0) every ``config.checkpoint_every`` steps and at the last one."""

    def __init__(self) -> None:
        self.saved_at: int | None = None

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.iteration % trainer.config.checkpoint_every == 0 or trainer.final_step:
            self._save()

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.stop_reason is not None and self.saved_at != trainer.iteration:
            self._save()  # a hook stopped the run after this hook's turn

    def _save(self) -> None:
        self.saved_at = self.trainer.iteration
        self.trainer.last_checkpoint = self.trainer.save("last.pt") or self.trainer.last_checkpoint


class TimeBudget(HookBase):
    """``config.max_minutes``: stop once the budget is spent (before ``trainer.end``).

    The time spent is measured by the step itself, in the all-reduce that also agrees on
    non-finite losses (the slowest process decides), so that one collective per step serves
    both; the step at which it runs out is already the last (logged, evaluated, saved).
    """

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.over_budget and trainer.iteration < trainer.end and trainer.stop_reason is None:
            trainer.stop("time_budget")
            trainer.logger.message(f"time budget spent at iteration {trainer.iteration}")


def note_clock(logger: Any, iteration: int, iterations: int, time_spent: float) -> None:
    """Log that the time budget binds the learning rate from ``iteration`` on (the step calls this)."""
    share = iteration / max(iterations, 1)
    logger.write({"kind": "schedule", "iteration": iteration, "follows_clock": True,
                  "budget_share": time_spent, "iteration_share": share})  # fmt: skip
    logger.message(
        f"the time budget binds: {100 * time_spent:.1f}% of it spent at {100 * share:.1f}% of the "
        f"iterations; from iteration {iteration} the learning rate follows the clock, so this "
        "run depends on the machine's timing and is not bit-reproducible"
    )


def default_hooks(config: Any) -> list[HookBase]:
    """The built-in hooks a run of ``config`` uses, in order (see the module docstring)."""
    from .early_stop import EarlyStopping
    from .ema import EMAHook

    hooks: list[HookBase] = [NonFiniteGuard()]
    if config.ema_decay is not None:
        hooks.append(EMAHook(config.ema_decay, config.ema_tau))
    hooks += [LogWriter(), Evaluation()]
    if config.early_stop_patience is not None:
        hooks.append(EarlyStopping(config.early_stop_patience, config.early_stop_min_delta))
    return hooks + [PeriodicCheckpoint(), TimeBudget()]
