"""The training loop: iteration-based, resumable, single process or DDP under torchrun.

One call does a whole run::

    from singleshot.training import TrainConfig, train
    result = train(TrainConfig(model="ssd300_voc", data="VOCdevkit/VOC2007", out="runs/voc"))

Per iteration: learning rate from the schedule, the next batch of the endless sampler,
forward (autocast on CUDA), MultiBox loss, a finite check agreed by all processes,
backward (scaled for fp16), optional clipping, the optimizer step. Rank 0 logs, writes
checkpoints (``last.pt``, ``best.pt`` by mAP) and evaluates.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..classes import load_class_map
from ..loss import MultiBoxLoss
from ..models.ssd import SSD
from . import distributed
from .config import TrainConfig
from .data import Transform, default_workers, make_train_loader, open_run_datasets
from .determinism import deterministic_algorithms
from .logging import RunLogger
from .optim import build_optimizer
from .results import NonFiniteLossError, StepWindow, TrainResult
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
from .state import capture_rng_state, restore_rng_state

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError"]


class Trainer:
    """A prepared run; `run` executes it. See `train` for the arguments and process-wide settings."""

    def __init__(
        self,
        config: TrainConfig,
        train_dataset: Any = None,
        val_dataset: Any = None,
        resume: str | os.PathLike | None = None,
        transform: Transform | None = None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
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
        if checkpoint is not None:
            model = model_from_checkpoint(checkpoint, resume)
        else:
            model = build_training_model(config, self.train_dataset.classes)
            model.category_ids = dataset_category_ids(self.train_dataset, model.num_classes)
        self.train_dataset, val_classes, notes = relate_classes(
            model, self.train_dataset, self.val_dataset, class_map
        )
        self.class_notes = root_notes + notes
        self.evaluator = evaluator or functools.partial(default_evaluator, classes=val_classes)
        self.model = self._place(model)
        self.transform = transform or default_transform(self.model, config.augment)
        self.criterion = MultiBoxLoss(model.num_classes, sync_positives=self.dist.distributed)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.schedule = LRSchedule(self.optimizer, config.schedule, config.iterations)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.position = 0
        self.skipped = 0
        self.bad_samples = 0
        self.best_map: float | None = None
        self.best_iteration: int | None = None
        self.rng_state = None
        self.elapsed_before = 0.0  # training time of the run's earlier processes (resume)
        self.clock_start = time.perf_counter()
        if checkpoint is not None:
            self._restore(checkpoint["training"])
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    # -- set-up ---------------------------------------------------------------------------
    def _place(self, model: SSD) -> SSD:
        model = model.to(self.device)
        # SSD.forward converts its input to channels-last when model.channels_last is set;
        # the run's setting applies while training, the model's own during evaluation.
        self.inference_channels_last = getattr(model, "channels_last", False)
        model.channels_last = self.config.channels_last
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.config.sync_bn and self.dist.distributed:
            if self.device.type != "cuda":
                raise ValueError("sync_bn needs GPUs (SyncBatchNorm does not run on CPU); use freeze_bn")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _restore(self, state: dict[str, Any]) -> None:
        # The saved state brings momentum buffers; rates and decays follow the current config
        # (a resumed run may change them, e.g. --lr).
        current = [(g["initial_lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (initial_lr, weight_decay) in zip(self.optimizer.param_groups, current):
            group["initial_lr"], group["weight_decay"] = initial_lr, weight_decay
        self.schedule.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.position = int(state["sampler"]["position"])
        self.skipped = int(state.get("skipped_steps", 0))
        self.bad_samples = int(state.get("bad_samples", 0))
        self.best_map = state.get("best_map")
        self.best_iteration = state.get("best_iteration")
        self.rng_state = state.get("rng")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))

    def training_state(self) -> dict[str, Any]:
        """Everything `--resume` needs, as plain data (see `singleshot.checkpoint`)."""
        return {
            "iteration": self.iteration,
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": capture_rng_state(),
            "sampler": {"position": self.position, "seed": self.config.seed},
            "skipped_steps": self.skipped,
            "bad_samples": self.bad_samples,
            "best_map": self.best_map,
            "best_iteration": self.best_iteration,
            "world_size": self.dist.world_size,
            "elapsed_s": time.perf_counter() - self.clock_start,
        }

    # -- the loop -------------------------------------------------------------------------
    def _train_mode(self) -> None:
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
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        moved = [
            {"boxes": t["boxes"].to(self.device, non_blocking=non_blocking),
             "labels": t["labels"].to(self.device, non_blocking=non_blocking), "image_id": t["image_id"]}
            for t in targets
        ]  # fmt: skip
        return x, moved

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.iterations`` (or ``stop_at``, or the time budget); see `train`."""
        with deterministic_algorithms(self.config.deterministic):
            return self._run(stop_at)

    def _run(self, stop_at: int | None) -> TrainResult:
        config = self.config
        end = config.iterations if stop_at is None else min(stop_at, config.iterations)
        main = self.dist.is_main
        logger = RunLogger(self.out, config.iterations, self.iteration, active=main, progress=self.progress)
        loader = make_train_loader(
            self.train_dataset,
            self.transform,
            self.local_batch,
            config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start_position=self.position,
            workers=default_workers(self.device.type) if config.workers is None else config.workers,
            pin_memory=self.device.type == "cuda",
            use_difficult=config.use_difficult,
            cache_images=config.cache_images,
            on_bad_sample=config.on_bad_sample,
        )
        batches = iter(loader)
        for note in self.class_notes:
            logger.message(f"note: {note}")
        if self.rng_state is not None:  # after the loader drew its worker seed, as a fresh run did
            restore_rng_state(self.rng_state)
        budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
        history: list[dict[str, Any]] = []
        metrics = None
        last_path = best_path = None
        stopped_by_budget = False
        window = StepWindow()
        # The budget counts the run's training time across resumes.
        start = self.clock_start = time.perf_counter() - self.elapsed_before
        self._train_mode()
        try:
            while self.iteration < end:
                tick = time.perf_counter()
                x, targets = next(batches)
                self._count_bad_samples(targets, logger)
                x, targets = self._batch_to_device(x, targets)
                window.data_s += time.perf_counter() - tick
                # A skipped step must not leave its forward's BatchNorm statistics behind.
                saved_buffers = self._buffer_snapshot() if config.on_nonfinite == "skip" else None
                loss_loc, loss_conf = self._forward_loss(x, targets)
                loss = loss_loc + loss_conf
                # One all-reduce: any process's non-finite loss, and the most time spent.
                nonfinite, time_spent = distributed.all_max(
                    [not bool(torch.isfinite(loss)), (time.perf_counter() - start) / budget_s], self.device
                )
                nonfinite, over_budget = nonfinite > 0, time_spent >= 1.0
                if self.schedule.set_iteration(self.iteration, min(time_spent, 1.0)):
                    self._note_clock(logger, time_spent)
                if nonfinite:
                    self._handle_nonfinite(loss_loc, loss_conf, targets, logger, saved_buffers)
                else:
                    self._step(loss)
                    window.add(loss_loc.item(), loss_conf.item())
                self.iteration += 1
                self.position += config.batch_size
                window.steps += 1
                window.seconds += time.perf_counter() - tick
                last = self.iteration == end or over_budget
                if self.iteration % config.log_every == 0 or last:
                    record = self._log_record(window, start)
                    history.append(record)
                    logger.write(record)
                    window = StepWindow()
                lr = self.optimizer.param_groups[0]["lr"]
                logger.advance(1, window.postfix(lr, config.batch_size) if window.steps else None)
                evaluate_now = config.eval_every and self.iteration % config.eval_every == 0
                if self.val_dataset is not None and (evaluate_now or last):
                    metrics = self._evaluate(logger)
                    best_path = self._update_best(metrics) or best_path
                if self.iteration % config.checkpoint_every == 0 or last:
                    last_path = self._save("last.pt")
                if over_budget and self.iteration < end:
                    stopped_by_budget = True
                    logger.message(f"time budget spent at iteration {self.iteration}")
                    break
        finally:
            logger.close()
            del batches
        if best_path is None and (self.out / "best.pt").is_file():
            best_path = self.out / "best.pt"
        return TrainResult(
            out=self.out,
            iteration=self.iteration,
            last_checkpoint=last_path if main else None,
            best_checkpoint=best_path if main else None,
            best_map=self.best_map,
            skipped_steps=self.skipped,
            bad_samples=self.bad_samples,
            elapsed_s=time.perf_counter() - start,
            stopped_by_budget=stopped_by_budget,
            follows_clock_from=self.schedule.follows_clock_from,
            metrics=metrics,
            history=history,
            model=self.model,
        )

    def _note_clock(self, logger: RunLogger, time_spent: float) -> None:
        share = self.iteration / max(self.config.iterations, 1)
        logger.write({"kind": "schedule", "iteration": self.iteration, "follows_clock": True,
                      "budget_share": time_spent, "iteration_share": share})  # fmt: skip
        logger.message(
            f"the time budget binds: {100 * time_spent:.1f}% of it spent at {100 * share:.1f}% of the "
            f"iterations; from iteration {self.iteration} the learning rate follows the clock, so this "
            "run depends on the machine's timing and is not bit-reproducible"
        )

    def _step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _count_bad_samples(self, targets: list[dict[str, Any]], logger: RunLogger) -> None:
        """Log the images this batch passed over as unreadable, and count them over all processes."""
        bad = [item for target in targets for item in target.get("bad_samples", ())]
        for name, reason in bad:
            logger.write({"kind": "bad_sample", "iteration": self.iteration, "image": name, "reason": reason})
            logger.message(f"iteration {self.iteration}: skipped an unreadable training image: {reason}")
        if self.config.on_bad_sample == "skip":
            self.bad_samples += distributed.all_sum(len(bad), self.device)

    def _buffer_snapshot(self) -> dict[str, Tensor]:
        return {name: b.clone() for name, b in self.model.named_buffers() if name != "priors"}

    def _handle_nonfinite(self, loss_loc, loss_conf, targets, logger, saved_buffers=None) -> None:
        losses = {"loss_loc": float(loss_loc.detach()), "loss_conf": float(loss_conf.detach())}
        image_ids = [str(t["image_id"]) for t in targets]
        if self.dist.distributed:  # report the whole global batch, and a process's non-finite terms
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, (losses, image_ids))
            image_ids = [i for _, ids in gathered for i in ids]
            bad = [terms for terms, _ in gathered if not all(math.isfinite(v) for v in terms.values())]
            losses = bad[0] if bad else losses
        if self.config.on_nonfinite == "stop":
            raise NonFiniteLossError(self.iteration, losses, image_ids)
        self.skipped += 1
        if saved_buffers is not None:
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    if name in saved_buffers:
                        buffer.copy_(saved_buffers[name])
        self.optimizer.zero_grad(set_to_none=True)
        logger.message(f"skipped iteration {self.iteration}: non-finite loss {losses}, images {image_ids}")

    def _log_record(self, window: StepWindow, start: float) -> dict[str, Any]:
        losses = torch.tensor([window.loc, window.conf, float(window.counted)], dtype=torch.float64)
        if self.dist.distributed:
            losses = losses.to(self.device)
            torch.distributed.all_reduce(losses)
            losses = losses.cpu()
        loc, conf, counted = losses.tolist()
        counted = max(counted, 1.0)
        per_step = window.seconds / max(window.steps, 1)
        return {
            "kind": "train",
            "iteration": self.iteration,
            "loss": (loc + conf) / counted,
            "loss_loc": loc / counted,
            "loss_conf": conf / counted,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": self.config.batch_size / per_step if per_step > 0 else 0.0,
            "data_wait_fraction": window.data_s / window.seconds if window.seconds > 0 else 0.0,
            "elapsed_s": time.perf_counter() - start,
            "eta_s": per_step * (self.config.iterations - self.iteration),
            "skipped": self.skipped,
            "bad_samples": self.bad_samples,
        }

    def _evaluate(self, logger: RunLogger) -> dict[str, Any] | None:
        metrics = None
        if self.dist.is_main:
            self.model.channels_last = self.inference_channels_last
            metrics = self.evaluator(
                self.model,
                self.val_dataset,
                self.config.eval_metric,
                self.config.eval_batch_size,
                self.device,
                False,
            )
            ap = {str(k): float(v) for k, v in metrics.get("ap", {}).items()}
            logger.write({"kind": "eval", "iteration": self.iteration, "metric": self.config.eval_metric,
                          "map": float(metrics["map"]), "ap": ap})  # fmt: skip
            logger.message(f"iteration {self.iteration}: {self.config.eval_metric} mAP {metrics['map']:.4f}")
            self.model.channels_last = self.config.channels_last
        distributed.barrier()
        self._train_mode()
        return metrics

    def _update_best(self, metrics: dict[str, Any] | None) -> Path | None:
        if metrics is None or not self.dist.is_main:
            return None
        value = float(metrics["map"])
        if self.best_map is not None and value <= self.best_map:
            return None
        self.best_map, self.best_iteration = value, self.iteration
        return self._save("best.pt")

    def _save(self, name: str) -> Path | None:
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.out / name, self.model, self.training_state())


def train(
    config: TrainConfig,
    train_dataset: Any = None,
    val_dataset: Any = None,
    resume: str | os.PathLike | None = None,
    transform: Transform | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    stop_at: int | None = None,
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
        evaluator: ``(model, dataset, metric, batch_size, device, progress) -> {"map": ...}``;
            None = `singleshot.evaluation.run.evaluate_model`.
        progress: show a progress bar (rank 0).
        stop_at: stop after this iteration as an interrupted run would (``last.pt`` written,
            evaluation run); the schedule still spans ``config.iterations``.

    Raises:
        NonFiniteLossError: a NaN/inf loss with ``on_nonfinite="stop"``.
        ValueError: bad configuration or data.

    Changes no process-wide setting: the ``singleshot`` command tunes glibc's malloc
    at start-up, a library user may call `singleshot.runtime.tune_malloc` once before
    training for the same speed on CPU.
    """
    trainer = Trainer(config, train_dataset, val_dataset, resume, transform, evaluator, progress)
    return trainer.run(stop_at=stop_at)
