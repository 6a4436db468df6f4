"""Training configuration: one dataclass tree (`TrainConfig` with its optimizer and schedule
sections), checked field by field when built from a dict.

Reading YAML recipes and applying ``key=value`` overrides is `singleshot.training.recipes`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["OptimizerConfig", "ScheduleConfig", "TrainConfig"]

AMP_MODES = ("none", "auto", "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")
BAD_SAMPLE_POLICIES = ("stop", "skip")


@dataclass
class OptimizerConfig:
    """How parameters are updated.

    Attributes:
        name: "sgd" (the paper) or "adamw".
        lr: base learning rate, for the TOTAL batch (`TrainConfig.batch_size`) over all processes.
        momentum: SGD momentum (adamw: beta1).
        weight_decay: L2 penalty on weights (SGD) or decoupled decay (AdamW).
        nesterov: Nesterov momentum (SGD).
        bias_lr_factor: learning-rate multiplier for biases; the paper's Caffe SSD used 2.
        bias_weight_decay: decay for biases; None = ``weight_decay`` (what the PyTorch ports
            do), 0 = none (the paper's Caffe SSD).
        norm_weight_decay: decay for BatchNorm weights/biases and the L2Norm scale;
            None = ``weight_decay``.
    """

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    bias_lr_factor: float = 1.0
    bias_weight_decay: float | None = None
    norm_weight_decay: float | None = None

    def validate(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optimizer.name must be 'sgd' or 'adamw', got {self.name!r}")
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.bias_lr_factor <= 0:
            raise ValueError("optimizer.weight_decay must be >= 0 and optimizer.bias_lr_factor > 0")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, as a factor of `OptimizerConfig.lr` per iteration.

    Attributes:
        name: "multistep" (x ``gamma`` at each milestone), "cosine" (from 1 down to
            ``min_factor`` at the last iteration) or "constant".
        milestones: iterations where multistep multiplies by ``gamma``.
        gamma: multistep factor.
        min_factor: cosine's final factor.
        warmup_iterations: linear warmup length (0 = none), applied on top of the schedule.
        warmup_factor: factor at iteration 0 of the warmup, rising linearly to 1.
        follow_time_budget: cosine only, with `TrainConfig.max_minutes`: once the run
            falls behind the budget's pace (see `singleshot.training.schedule.LRSchedule`),
            the cosine's progress is the larger of (iterations done / iterations) and
            (minutes spent / max_minutes), so that a run the time budget stops early still
            ends annealed instead of at a high rate. A run that keeps ahead of the pace
            never consults the clock and is bit-reproducible; one whose budget binds depends
            on the timing, and its log says from which iteration.
    """

    name: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_factor: float = 0.0
    warmup_iterations: int = 0
    warmup_factor: float = 0.001
    follow_time_budget: bool = False

    def validate(self) -> None:
        if self.name not in ("multistep", "cosine", "constant"):
            raise ValueError(f"schedule.name must be multistep, cosine or constant, got {self.name!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"schedule.milestones must be increasing, got {self.milestones}")
        if self.warmup_iterations < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError("schedule.warmup_iterations must be >= 0 and warmup_factor in (0, 1]")
        if self.follow_time_budget and self.name != "cosine":
            raise ValueError(f"schedule.follow_time_budget needs the cosine schedule, not {self.name!r}")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint).

    Attributes:
        model: preset name (`singleshot.available_models()`).
        data: dataset root (VOC folder, COCO root or YOLO root), or a list of roots whose
            training splits are concatenated (VOC07+12: ``[VOC2007, VOC2012]``); None when
            datasets are passed to `train` directly.
        val_data: root of the evaluation split; None = the first of ``data``.
        images / annotations: a COCO training set given by its files instead of ``data``
            (an image folder and its instances JSON, in no particular layout).
        val_images / val_annotations: the same for the evaluation set; with ``images``
            and neither these nor ``val_data``, there is no evaluation.
        format: "voc", "coco", "yolo" or None (detected).
        train_split / val_split: split names; val_split None disables evaluation.
        use_difficult: train on objects flagged difficult (Caffe SSD did; ssd.pytorch drops them).
        cache_images: keep decoded training images in memory (small datasets only; per
            loader process).
        out: run folder (checkpoints, log.jsonl, TensorBoard events).
        seed: seeds the model initialisation, the data order and the augmentations.
        batch_size: images per iteration over ALL processes; each of N processes takes
            batch_size / N.
        iterations: length of the run.
        max_minutes: wall-clock budget of the training, counted across resumes; the run stops
            cleanly (checkpoint, evaluation) when it is spent. None = no budget.
        workers: DataLoader worker processes per training process (0 = load in the loop);
            None = auto: 0 when training on the CPU (a worker takes cores from the compute
            threads: measured slower on 2 cores), else up to 8, sharing the machine's cores
            among the processes of this node.
        device: "auto" (CUDA when available, the local rank's GPU under torchrun), "cpu", "cuda".
        amp: "none", "auto" (bf16 where the GPU supports it, else fp16; none on CPU),
            "bf16" or "fp16" (with a gradient scaler). Autocast is used on CUDA only.
        clip_grad_norm: clip the gradients' global L2 norm to this (None = no clipping).
        on_nonfinite: "stop" raises on a NaN/inf loss (naming iteration, loss terms and the
            batch's image ids; the last checkpoint is left intact); "skip" drops that step
            and counts it.
        on_bad_sample: what to do when a training image cannot be read during the run
            (deleted or corrupted on disk after the dataset was opened): "stop" raises a
            ValueError naming the file (the last checkpoint is left intact); "skip" replaces
            it by the next readable image in dataset order (reproducible), counts it
            (``bad_samples`` in the log and the checkpoint) and logs its name.
        deterministic: deterministic CUDA arithmetic during the run (cuDNN without
            autotuning, no atomics-based kernels, no TF32; see
            `singleshot.training.determinism`), so that a CUDA run and its resume are
            reproducible bit for bit, at some cost in speed. CPU runs are reproducible
            without it.
        dist_timeout_minutes: how long DDP processes wait for one another in a collective
            before the run fails (NCCL's default is 10 minutes; evaluation is shared among
            the processes, so none waits out another's).
        sync_bn: convert BatchNorm layers to SyncBatchNorm under multi-GPU DDP.
        freeze_bn: keep BatchNorm layers in eval mode (running statistics, no update).
        channels_last: the memory format of the network's weights and input. "auto" (the
            default): at the start of a run, rank 0 times a few training steps in each of
            channels-last and NCHW on this machine and keeps the faster (seconds; cached
            per machine, model, batch and thread count: see `singleshot.layout`), since
            which wins depends on the CPU (channels-last won an SSD300 step on an AVX-512
            Xeon and lost it on an AVX2 EPYC). true / false force channels-last / NCHW
            without a trial. The decision is logged and recorded in the checkpoint: a
            resumed run keeps the layout it started with.
        log_every / checkpoint_every / eval_every: in iterations (eval_every 0 = only at the end).
        eval_metric: "voc07", "voc12" or "coco"; the best checkpoint is chosen by its mAP.
        eval_batch_size: images per evaluation batch.
        ema_decay: keep an exponential moving average of the weights with this decay, in
            (0, 1) (e.g. 0.9998), and evaluate and save it as the model (see
            `singleshot.training.ema`); None = off.
        ema_tau: the average's warm-up time constant, in updates: update ``u`` uses the decay
            ``ema_decay * (1 - exp(-u / ema_tau))`` (YOLOv5's form); 0 = the constant ``ema_decay``.
        early_stop_patience: stop the run after this many evaluations in a row without an
            mAP gain of more than ``early_stop_min_delta`` (needs ``eval_every`` > 0 and a
            validation set; see `singleshot.training.early_stop`); None = off.
        early_stop_min_delta: the smallest mAP gain counted as an improvement.
        backbone_weights: ImageNet backbone weights loaded before training: VGG16 (ssd.pytorch
            ``vgg16_reducedfc.pth`` or a torchvision VGG16 state dict) for the SSD presets,
            torchvision's ``mobilenet_v3_large`` for SSDLite (whose backbone then has the full tail);
            a file, or a published backbone's name ("vgg16_reducedfc", "mobilenet_v3_large_imagenet").
        init_from: a singleshot checkpoint (or a published detector's name) to fine-tune from;
            class heads are re-initialised
            for another set of class names (reordered for the same names in another order),
            everything else is kept.
        class_map: a YAML or JSON file {dataset class name: model class name} relating
            training roots and the validation set whose class names differ (see
            `singleshot.classes`); without one, class names must agree (in any order).
        prior_clip: see `singleshot.build_model`.
        augment: keyword arguments for `singleshot.data.SSDAugmentation` besides size/mean/std:
            ``photometric`` and ``expand`` (both true by default; the SSDLite recipe turns both
            off, as torchvision trained it).
    """

    model: str = "ssd300_voc"
    data: str | list[str] | None = None
    val_data: str | None = None
    images: str | None = None
    annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    format: str | None = None
    train_split: str = "trainval"
    val_split: str | None = "test"
    use_difficult: bool = True
    cache_images: bool = False
    out: str = "runs/train"
    seed: int = 0
    batch_size: int = 32
    iterations: int = 120_000
    max_minutes: float | None = None
    workers: int | None = None
    device: str = "auto"
    amp: str = "auto"
    clip_grad_norm: float | None = None
    on_nonfinite: str = "stop"
    on_bad_sample: str = "stop"
    deterministic: bool = False
    dist_timeout_minutes: float = 60.0
    sync_bn: bool = False
    freeze_bn: bool = False
    channels_last: bool | str = "auto"
    log_every: int = 20
    checkpoint_every: int = 5000
    eval_every: int = 0
    eval_metric: str = "voc07"
    eval_batch_size: int = 8
    ema_decay: float | None = None
    ema_tau: float = 2000.0
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    backbone_weights: str | None = None
    init_from: str | None = None
    class_map: str | None = None
    prior_clip: str | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.batch_size < 1 or self.iterations < 1:
            raise ValueError("batch_size and iterations must be >= 1")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")
        if not self.dist_timeout_minutes > 0:
            raise ValueError(f"dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}")
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(
                f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {self.on_bad_sample!r}"
            )
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise ValueError(f"channels_last must be true, false or auto, got {self.channels_last!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.eval_every < 0:
            raise ValueError("log_every and checkpoint_every must be >= 1, eval_every >= 0")
        if self.eval_metric not in ("voc07", "voc12", "coco"):
            raise ValueError(f"eval_metric must be voc07, voc12 or coco, got {self.eval_metric!r}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be > 0, got {self.clip_grad_norm}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        self._validate_hooks()
        for folder, json_file in (("images", "annotations"), ("val_images", "val_annotations")):
            if (getattr(self, folder) is None) != (getattr(self, json_file) is None):
                raise ValueError(f"{folder} and {json_file} go together (a COCO image folder and its JSON)")
        if self.images is not None and self.data is not None:
            raise ValueError(
                "give the training set as data (a dataset folder) or images + annotations, not both"
            )
        self.optimizer.validate()
        self.schedule.validate()

    def _validate_hooks(self) -> None:
        """The EMA and early-stopping settings."""
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (e.g. 0.9998), got {self.ema_decay}")
        if self.ema_tau < 0:
            raise ValueError(f"ema_tau must be >= 0 (0: constant decay), got {self.ema_tau}")
        if self.early_stop_patience is not None:
            if self.early_stop_patience < 1:
                raise ValueError(f"early_stop_patience must be >= 1, got {self.early_stop_patience}")
            if self.eval_every == 0:
                raise ValueError("early_stop_patience counts evaluations: set eval_every > 0")
        if self.early_stop_min_delta < 0:
            raise ValueError(f"early_stop_min_delta must be >= 0, got {self.early_stop_min_delta}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a nested dict; unknown keys raise ValueError naming ``source``."""
        return _build(cls, data, source)


_Section = TypeVar("_Section", bound="DataclassInstance")


def _build(cls: type[_Section], data: Any, where: str) -> _Section:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = cast(str, fields[name].type)  # postponed evaluation: annotations are strings
        if name == "optimizer":
            value = _build(OptimizerConfig, value, f"{where}: optimizer")
        elif name == "schedule":
            value = _build(ScheduleConfig, value, f"{where}: schedule")
        else:
            value = _coerce(value, kind, f"{where}: {name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: Any, kind: str, where: str) -> Any:
    """Check a YAML value against a field's annotation (a string, with postponed evaluation)."""
    if value is None:
        if "None" in kind:
            return None
        raise ValueError(f"{where}: may not be null")
    base = kind.replace(" | None", "")
    if base in ("int", "float") and isinstance(value, str):
        try:  # PyYAML reads 1e-3 and 1.2e5 (no dot or no sign) as strings
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected {kind}, got {value!r}") from None
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # YAML reads 1.2e5 as a float
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "bool | str":
        return value if isinstance(value, bool) else _coerce(value, "str", where)
    if base == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if base == "list[int]" and isinstance(value, (list, tuple)):
        return [_coerce(v, "int", where) for v in value]
    if base == "str | list[str]":
        if isinstance(value, (list, tuple)) and value:
            return [_coerce(v, "str", where) for v in value]
        return _coerce(value, "str", where)
    if base.startswith("dict") and isinstance(value, dict):
        return dict(value)
    raise ValueError(f"{where}: expected {kind}, got {value!r}")
