"""The training loop: iteration-based, resumable, single process or DDP under torchrun.

One call does a whole run::

    from singleshot.training import TrainConfig, train
    result = train(TrainConfig(model="ssd300_voc", data="VOCdevkit/VOC2007", out="runs/voc"))

Per iteration (`Trainer.run_step`): the next batch of the endless sampler, forward
(autocast on CUDA), MultiBox loss, a finite check agreed by all processes, the learning
rate from the schedule, backward (scaled for fp16), optional clipping, the optimizer step.
Around it, hooks (`singleshot.training.hooks`) handle non-finite losses, the EMA of the
weights, logging, evaluation with ``best.pt``, early stopping, ``last.pt`` and the time
budget; every process evaluates its share of the validation images, rank 0 logs and
writes checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..classes import load_class_map
from ..layout import apply_memory_format
from ..loss import MultiBoxLoss
from ..models.ssd import SSD
from . import distributed
from .config import TrainConfig
from .data import Transform, default_workers, make_train_loader, open_run_datasets
from .determinism import deterministic_algorithms
from .hooks import HookBase, default_hooks, note_clock
from .logging import RunLogger
from .memory_format import run_layout
from .optim import build_optimizer
from .results import NonFiniteLossError, TrainResult
from .run_state import capture_run_state, restore_run_state
from .schedule import LRSchedule
from .setup import (
    Evaluator,
    build_training_model,
    dataset_category_ids,
    default_evaluator,
    default_transform,
    freeze_batch_norm,
    relate_classes,
    resolve_amp,
)
from .state import restore_rng_state

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError", "HookBase"]


class Trainer:
    """A prepared run; `run` executes it. See `train` for the arguments and process-wide settings.

    The loop (`run`) calls `run_step` for each iteration and the hooks around it (see
    `singleshot.training.hooks`): the built-in ones for ``config`` (`default_hooks`), then
    ``hooks``, the caller's own `HookBase` instances.
    """

    # set at the start of each run (`_run`)
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    stop_reason: str | None

    def __init__(
        self,
        config: TrainConfig,
        train_dataset: Any = None,
        val_dataset: Any = None,
        resume: str | os.PathLike | None = None,
        transform: Transform | None = None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
        hooks: Sequence[HookBase] = (),
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.dist, self.device = distributed.init_distributed(config.device, config.dist_timeout_minutes)
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the {self.dist.world_size} processes"
            )
        self.local_batch = config.batch_size // self.dist.world_size
        class_map = load_class_map(config.class_map)
        self.train_dataset, self.val_dataset, root_notes = open_run_datasets(
            config, train_dataset, val_dataset, class_map
        )
        self.progress = progress
        checkpoint = load_checkpoint(resume) if resume else None
        if checkpoint is not None and "training" not in checkpoint:
            raise ValueError(f"{resume}: has no training state to resume (a bare model checkpoint)")
        init_notes: list[str] = []
        model = self._model(checkpoint, resume, init_notes)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.train_dataset, val_classes, notes = relate_classes(
            model, self.train_dataset, self.val_dataset, class_map
        )
        self.class_notes = root_notes + init_notes + notes
        self.evaluator = evaluator or functools.partial(
            default_evaluator, classes=val_classes, workers=config.workers
        )
        self.model = self._place(model, checkpoint, resume)
        self.output_model: SSD = self.model
        self.transform = transform or default_transform(self.model, config.augment)
        self.criterion = MultiBoxLoss(model.num_classes, sync_positives=self.dist.distributed)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.schedule = LRSchedule(self.optimizer, config.schedule, config.iterations)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._reset_state()
        self.hooks: list[HookBase] = []
        self.register_hooks(default_hooks(config) + list(hooks))
        if checkpoint is not None:
            restore_run_state(self, checkpoint["training"], resume)
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    # -- set-up ---------------------------------------------------------------------------
    def _model(self, checkpoint: dict[str, Any] | None, resume: Any, notes: list[str]) -> SSD:
        if checkpoint is not None:
            return model_from_checkpoint(checkpoint, resume)
        model = build_training_model(self.config, self.train_dataset.classes, notes)
        model.category_ids = dataset_category_ids(self.train_dataset, model.num_classes)
        return model

    def _place(self, model: SSD, checkpoint: dict[str, Any] | None, where: Any) -> SSD:
        model = model.to(self.device)
        # The run's model takes the run's memory format (forced, the checkpoint's or rank 0's
        # trial), once: SSD.forward converts its input to channels-last when model.channels_last
        # is set, and evaluation runs it as it is.
        recorded = checkpoint["training"].get("layout") if checkpoint is not None else None
        self.layout = run_layout(self.config, model, recorded, self.local_batch, self.amp_dtype, self.dist,
                                 where)  # fmt: skip
        model = apply_memory_format(model, self.layout)
        if self.config.sync_bn and self.dist.distributed:
            if self.device.type != "cuda":
                raise ValueError("sync_bn needs GPUs (SyncBatchNorm does not run on CPU); use freeze_bn")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _reset_state(self) -> None:
        self.iteration = self.position = self.skipped = self.bad_samples = 0
        self.best_map: float | None = None
        self.best_iteration: int | None = None
        self.rng_state = None
        self.elapsed_before = 0.0  # training time of the run's earlier processes (resume)
        self.clock_start = time.perf_counter()

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append hooks (called after those registered before them); each learns its trainer."""
        for hook in hooks:
            if not isinstance(hook, HookBase):
                raise TypeError(f"hooks must be HookBase instances, got {type(hook).__name__}")
            hook.trainer = self
            self.hooks.append(hook)

    def training_state(self) -> dict[str, Any]:
        """Everything `--resume` needs, as plain data (see `singleshot.checkpoint`)."""
        return capture_run_state(self)

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.iterations`` (or ``stop_at``, the time budget, a hook's stop); see `train`."""
        with deterministic_algorithms(self.config.deterministic):
            return self._run(stop_at)

    def stop(self, reason: str) -> None:
        """End the run after the current step's hooks (for hooks; ``reason`` goes to the result)."""
        self.stop_reason = reason

    @property
    def final_step(self) -> bool:
        """Whether the step just done is the run's last (end, time budget or a hook's stop)."""
        return self.iteration >= self.end or self.over_budget or self.stop_reason is not None

    def _run(self, stop_at: int | None) -> TrainResult:
        config = self.config
        self.end = config.iterations if stop_at is None else min(stop_at, config.iterations)
        self.logger = RunLogger(self.out, config.iterations, self.iteration, active=self.dist.is_main,
                                progress=self.progress)  # fmt: skip
        self.batches = iter(self._loader())
        for note in self.class_notes:
            self.logger.message(f"note: {note}")
        self.logger.message(f"layout: {self.layout.describe()}")
        self.logger.write({"kind": "layout", "iteration": self.iteration, "decision": self.layout.to_dict()})
        if self.rng_state is not None:  # after the loader drew its worker seed, as a fresh run did
            restore_rng_state(self.rng_state)
        self.budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] | None = None
        self.last_checkpoint = self.best_checkpoint = None
        self.stop_reason = None
        self.over_budget = False
        # The budget counts the run's training time across resumes.
        self.start = self.clock_start = time.perf_counter() - self.elapsed_before
        self.train_mode()
        try:
            self._call("before_train")
            while self.iteration < self.end and self.stop_reason is None:
                self._call("before_step")
                self.run_step()
                self.iteration += 1
                self.position += config.batch_size
                self._call("after_step")
            self._call("after_train")
        finally:
            self.logger.close()
            del self.batches
        return self._result()

    def _call(self, method: str) -> None:
        for hook in self.hooks:
            getattr(hook, method)()

    def _loader(self) -> Any:
        config, device = self.config, self.device
        workers = default_workers(device.type) if config.workers is None else config.workers
        return make_train_loader(
            self.train_dataset, self.transform, self.local_batch, config.seed, rank=self.dist.rank,
            world_size=self.dist.world_size, start_position=self.position, workers=workers,
            pin_memory=device.type == "cuda", use_difficult=config.use_difficult,
            cache_images=config.cache_images, on_bad_sample=config.on_bad_sample,
        )  # fmt: skip

    def _result(self) -> TrainResult:
        main = self.dist.is_main
        best_path = self.best_checkpoint
        if best_path is None and (self.out / "best.pt").is_file():
            best_path = self.out / "best.pt"
        return TrainResult(
            out=self.out,
            iteration=self.iteration,
            last_checkpoint=self.last_checkpoint if main else None,
            best_checkpoint=best_path if main else None,
            best_map=self.best_map,
            skipped_steps=self.skipped,
            bad_samples=self.bad_samples,
            elapsed_s=time.perf_counter() - self.start,
            stopped_by_budget=self.stop_reason == "time_budget",
            follows_clock_from=self.schedule.follows_clock_from,
            metrics=self.metrics,
            history=self.history,
            model=self.output_model,
            stop_reason=self.stop_reason,
        )

    def run_step(self) -> None:
        """One iteration: batch, forward and loss, the processes' agreement, the update.

        Sets ``data_seconds``, ``over_budget``, ``step_losses`` ((loc, conf) floats, None when
        the loss was not finite) and ``nonfinite`` (the loss terms and targets, for
        `NonFiniteGuard`, or None).
        """
        tick = time.perf_counter()
        x, targets = next(self.batches)
        self._count_bad_samples(targets)
        x, targets = self._batch_to_device(x, targets)
        self.data_seconds = time.perf_counter() - tick
        loss_loc, loss_conf = self._forward_loss(x, targets)
        loss = loss_loc + loss_conf
        # The step's one read from the device (after one all-reduce under DDP): any process's
        # non-finite loss, the most time spent, and this process's loss terms.
        nonfinite, time_spent, (loc_value, conf_value) = distributed.agree_on_step(
            loss, (loss_loc, loss_conf), (time.perf_counter() - self.start) / self.budget_s
        )
        self.over_budget = time_spent >= 1.0
        if self.schedule.set_iteration(self.iteration, min(time_spent, 1.0)):
            note_clock(self.logger, self.iteration, self.config.iterations, time_spent)
        self.step_losses = self.nonfinite = None
        if nonfinite:
            self.nonfinite = ((loss_loc, loss_conf), targets)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self._step(loss)
            self.step_losses = (loc_value, conf_value)

    def train_mode(self) -> None:
        """Training mode for ``model`` (BatchNorm layers kept in eval mode with ``config.freeze_bn``)."""
        self.model.train()
        if self.config.freeze_bn:
            freeze_batch_norm(self.model)

    def _forward_loss(self, x: Tensor, targets: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        if self.amp_dtype is None:
            loc, conf = self.ddp_model(x)
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                loc, conf = self.ddp_model(x)
        return self.criterion(loc.float(), conf.float(), self.model.priors, targets)

    def _batch_to_device(self, x: Tensor, targets: list[dict]) -> tuple[Tensor, list[dict]]:
        """The images to the device; the targets stay in host memory, where the loss checks
        and pads them without waiting for the GPU (`singleshot.boxes.pad_targets`)."""
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.layout.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets

    def _step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _count_bad_samples(self, targets: list[dict[str, Any]]) -> None:
        """Log the images this batch passed over as unreadable, and count them over all processes."""
        bad = [item for target in targets for item in target.get("bad_samples", ())]
        for name, reason in bad:
            self.logger.write({"kind": "bad_sample", "iteration": self.iteration, "image": name,
                               "reason": reason})  # fmt: skip
            self.logger.message(f"iteration {self.iteration}: skipped an unreadable training image: {reason}")
        if self.config.on_bad_sample == "skip":
            self.bad_samples += distributed.all_sum(len(bad), self.device)

    # -- what hooks call ------------------------------------------------------------------
    def save(self, name: str) -> Path | None:
        """Write ``output_model`` and the training state to ``out/name`` (rank 0; None elsewhere)."""
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.out / name, self.output_model, self.training_state())


def train(
    config: TrainConfig,
    train_dataset: Any = None,
    val_dataset: Any = None,
    resume: str | os.PathLike | None = None,
    transform: Transform | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    hooks: Sequence[HookBase] = (),
) -> TrainResult:
    """Train an SSD as ``config`` says (under torchrun: one DDP process of the run).

    Args:
        config: the run (see `TrainConfig`).
        train_dataset / val_dataset: detection datasets (``ds[i] -> (uint8 image (3, H, W),
            target with xyxy pixel boxes)``, ``ds.classes``); None = open ``config.data``'s
            ``train_split`` / ``val_split``. No validation set: no evaluation.
        resume: a ``last.pt`` to continue from (model, optimizer, schedule, scaler, RNG
            states, sampler position, best mAP): the continued run equals an uninterrupted one.
        transform: training augmentation ``(image, target, generator=g) -> (x, target)``;
            None = `singleshot.data.SSDAugmentation` with ``config.augment``.
        evaluator: ``(model, dataset, metric, batch_size, device, progress) -> {"map": ...}``,
            called on every process under DDP (rank 0's result counts); None =
            `singleshot.evaluation.run.evaluate_model` with the images shared among the
            processes and ``config.workers`` loader workers.
        progress: show a progress bar (rank 0).
        stop_at: stop after this iteration as an interrupted run would (``last.pt`` written,
            evaluation run); the schedule still spans ``config.iterations``.
        hooks: the caller's own `singleshot.training.hooks.HookBase` instances, called after
            the built-in ones (see that module for the order and what they see).

    Raises:
        NonFiniteLossError: a NaN/inf loss with ``on_nonfinite="stop"``.
        ValueError: bad configuration or data.

    Changes no process-wide setting: the ``singleshot`` command tunes glibc's malloc
    at start-up, a library user may call `singleshot.runtime.tune_malloc` once before
    training for the same speed on CPU.
    """
    trainer = Trainer(config, train_dataset, val_dataset, resume, transform, evaluator, progress, hooks)
    return trainer.run(stop_at=stop_at)
