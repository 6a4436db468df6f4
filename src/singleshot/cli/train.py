"""``singleshot train``: train an SSD from a recipe, flags and ``--set`` overrides; resume a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .eval import CLASS_MAP_HELP

if TYPE_CHECKING:
    from ..training.config import TrainConfig

EPILOG = """\
classes are identified by name: training roots and --val-data may list the same classes
in another order (a note says so); other names are an error unless --class-map relates them.

precedence: recipe (--config) < flags < --set overrides. On --resume the run's saved
configuration is used, and only the flags/overrides given on this command change it
(e.g. --iterations to extend a run).

recipes shipped (singleshot train --list-recipes): the paper's SSD300/SSD512 runs on
VOC07+12 (batch 32, SGD lr 1e-3, momentum 0.9, decay 5e-4, x0.1 at 80k and 100k of 120k)
and COCO (x0.1 at 280k and 360k of 400k), plus the compact demo recipe.

the paper's Caffe bias rules (biases at 2x the learning rate and without weight decay)
are off by default, as in the PyTorch ports; turn them on with --paper-bias or
--set optimizer.bias_lr_factor=2 --set optimizer.bias_weight_decay=0.

multi-GPU / multi-node (PyTorch DDP): launch the same command under torchrun, e.g.
  torchrun --nproc_per_node=8 -m singleshot.cli train --config ssd300_voc0712 --data ...
--batch-size and the learning rate are for the total batch over all processes.
"""

# flag dest -> config key (flags left at None are not applied)
FLAG_KEYS = {
    "model": "model",
    "val_data": "val_data",
    "images": "images",
    "annotations": "annotations",
    "val_images": "val_images",
    "val_annotations": "val_annotations",
    "format": "format",
    "out": "out",
    "train_split": "train_split",
    "iterations": "iterations",
    "batch_size": "batch_size",
    "lr": "optimizer.lr",
    "workers": "workers",
    "device": "device",
    "amp": "amp",
    "seed": "seed",
    "max_minutes": "max_minutes",
    "eval_every": "eval_every",
    "eval_metric": "eval_metric",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "clip_grad_norm": "clip_grad_norm",
    "on_nonfinite": "on_nonfinite",
    "on_bad_sample": "on_bad_sample",
    "backbone_weights": "backbone_weights",
    "init_from": "init_from",
    "class_map": "class_map",
    "ema_decay": "ema_decay",
    "early_stop_patience": "early_stop_patience",
    "early_stop_min_delta": "early_stop_min_delta",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SSD (single process, or DDP under torchrun)",
        description=(
            "Train an SSD detector on a VOC, COCO or YOLO dataset. Writes into the run folder:\n"
            "last.pt (every --checkpoint-every iterations and at the end), best.pt (best evaluation\n"
            "mAP), log.jsonl (every logged step) and TensorBoard events when tensorboard is installed."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe: a file or a shipped recipe name")
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    _data_arguments(parser.add_argument_group("data"))
    _run_arguments(parser.add_argument_group("run"))
    _model_arguments(parser.add_argument_group("model and optimisation"))
    _evaluation_arguments(parser.add_argument_group("evaluation, checkpoints and logging"))
    add = parser.add_argument
    add(
        "--resume", nargs="?", const="", metavar="CHECKPOINT", help="continue a run (default RUN_DIR/last.pt)"
    )
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="set any config key, e.g. --set optimizer.momentum=0.95 --set schedule.name=cosine")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _data_arguments(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--data", nargs="+", metavar="PATH",
        help="dataset root (VOC folder, COCO or YOLO root); "
        "several roots concatenate their training splits")  # fmt: skip
    add("--val-data", metavar="PATH", help="root of the evaluation split (default: the first --data)")
    add(
        "--images",
        metavar="DIR",
        help="COCO training images given by files, instead of --data; with --annotations",
    )
    add("--annotations", metavar="FILE", help="COCO instances JSON of --images")
    add("--val-images", metavar="DIR", help="COCO evaluation images (with --val-annotations); "
        "with --images and no --val-data/--val-images, no evaluation")  # fmt: skip
    add("--val-annotations", metavar="FILE", help="COCO instances JSON of --val-images")
    add("--format", choices=("voc", "coco", "yolo"), help="dataset format (default: detected)")
    add("--train-split", help="training split (default trainval)")
    add("--val-split", help="evaluation split (default test); 'none' disables evaluation")
    add("--class-map", metavar="FILE",
        help=f"relate training roots and --val-data whose class names differ: {CLASS_MAP_HELP}")  # fmt: skip
    add("--workers", type=int, help="loader processes per training process (default: 0 on CPU, <= 8 on GPU)")
    add("--on-bad-sample", choices=("stop", "skip"),
        help="a training image unreadable during the run: "
        "stop naming it (default) or skip and count it")  # fmt: skip


def _run_arguments(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--out", metavar="RUN_DIR", help="run folder for checkpoints and logs (default runs/train)")
    add("--iterations", type=int, help="number of training iterations")
    add("--batch-size", type=int, help="images per iteration, total over all processes")
    add("--device", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    add("--amp", choices=("none", "auto", "bf16", "fp16"), help="mixed precision on CUDA (default auto)")
    add("--seed", type=int, help="seed of initialisation, data order and augmentation")
    add(
        "--max-minutes",
        type=float,
        help="wall-clock budget: stop cleanly (checkpoint, evaluation) when spent",
    )
    add("--on-nonfinite", choices=("stop", "skip"), help="on a NaN/inf loss: stop (default) or skip the step")


def _model_arguments(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--model", help="model preset: ssd300_voc, ssd300_coco, ssd512_voc, ssd512_coco, ssd160_compact, "
        "ssdlite320_voc or ssdlite320_coco")  # fmt: skip
    add("--lr", type=float, help="base learning rate (for the total batch)")
    add("--clip-grad-norm", type=float, help="clip the gradients' global L2 norm to this value")
    add("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under multi-GPU DDP")
    add("--freeze-bn", action="store_true", default=None, help="keep BatchNorm layers in eval mode")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="force the channels-last (or, --no-channels-last, the NCHW) memory format. Default "
        "(channels_last: auto): the run starts by timing a few training steps in each on this "
        "machine and keeps the faster, cached per machine, model, batch and thread count; the "
        "choice is logged and kept by --resume")  # fmt: skip
    add("--paper-bias", action="store_true", help="Caffe SSD bias rules: 2x learning rate, no weight decay")
    add(
        "--backbone-weights",
        metavar="NAME|FILE",
        help="ImageNet backbone weights: VGG16 (vgg16_reducedfc.pth or torchvision) for ssd*, "
        "torchvision mobilenet_v3_large for ssdlite*; or a published backbone's name, downloaded "
        "once and verified: vgg16_reducedfc, vgg16_imagenet, mobilenet_v3_large_imagenet "
        "(`singleshot models`)",
    )
    add("--init-from", metavar="NAME|CHECKPOINT",
        help="fine-tune a trained detector, a checkpoint or a published detector's name (the class "
             "predictors of classes it has are taken by name, the others start afresh; a note says "
             "which)")  # fmt: skip
    add("--ema-decay", type=float, metavar="DECAY",
        help="evaluate and save an exponential moving average of the weights with this decay, e.g. 0.9998 "
        "(warmed up as DECAY * (1 - exp(-updates / ema_tau)), ema_tau 2000 by default)")  # fmt: skip


def _evaluation_arguments(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--eval-every", type=int, help="evaluate every N iterations (0: only at the end)")
    add("--eval-metric", choices=("voc07", "voc12", "coco"), help="metric choosing best.pt")
    add("--early-stop-patience", type=int, metavar="N",
        help="stop after N evaluations in a row without an mAP gain (needs --eval-every)")  # fmt: skip
    add("--early-stop-min-delta", type=float, metavar="GAIN",
        help="the smallest mAP gain that counts as one for --early-stop-patience (default 0)")  # fmt: skip
    add("--checkpoint-every", type=int, help="write last.pt every N iterations")
    add("--log-every", type=int, help="log (JSONL, TensorBoard) every N iterations")


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The config values the flags given on the command line set."""
    values: dict[str, object] = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if args.data:
        values["data"] = args.data[0] if len(args.data) == 1 else list(args.data)
    if args.val_split is not None:
        values["val_split"] = None if args.val_split.lower() == "none" else args.val_split
    for flag in ("sync_bn", "freeze_bn"):
        if getattr(args, flag):
            values[flag] = True
    if args.channels_last is not None:
        values["channels_last"] = args.channels_last
    if args.paper_bias:
        values["optimizer.bias_lr_factor"] = 2.0
        values["optimizer.bias_weight_decay"] = 0.0
    return values


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """(config, resume checkpoint path or None) from the command line."""
    from ..checkpoint import load_checkpoint
    from ..training.config import TrainConfig
    from ..training.recipes import apply_overrides, apply_values, load_recipe

    resume = None
    if args.resume is not None:
        resume = Path(args.resume) if args.resume else Path(args.out or "runs/train") / "last.pt"
        checkpoint = load_checkpoint(resume)
        saved = checkpoint.get("training", {}).get("config")
        if saved is None:
            raise ValueError(f"{resume}: has no training state to resume")
        config = TrainConfig.from_dict(saved, source=str(resume))
        if args.config:
            raise ValueError("--resume continues the saved configuration: drop --config")
    elif args.config:
        config = load_recipe(args.config)
    else:
        config = TrainConfig()
    config = apply_values(config, flag_values(args))
    config = apply_overrides(config, args.overrides)
    config.validate()
    return config, resume


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        from ..training.recipes import available_recipes

        print("\n".join(available_recipes()))
        return 0
    from ..training import NonFiniteLossError, distributed, train

    config, resume = build_config(args)
    if config.data is None and config.images is None:
        raise ValueError(
            "no dataset: give --data PATH or --images DIR --annotations FILE (or data: in the recipe)"
        )
    try:
        result = train(config, resume=resume, progress=not args.no_progress)
    except NonFiniteLossError as error:
        print(f"singleshot train: error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    if result.last_checkpoint is not None:
        print(f"trained {result.iteration} iterations in {result.elapsed_s / 60:.1f} min", end="")
        print(f", {result.skipped_steps} skipped" if result.skipped_steps else "", end="")
        print(f", {result.bad_samples} unreadable images skipped" if result.bad_samples else "")
        if result.stop_reason == "early_stopping":
            print(
                f"stopped early: no {config.eval_metric} mAP gain in {config.early_stop_patience} evaluations"
            )
        if result.follows_clock_from is not None:
            print(f"the time budget bound: the learning rate followed the clock from iteration "
                  f"{result.follows_clock_from} (not bit-reproducible)")  # fmt: skip
        print(f"last checkpoint: {result.last_checkpoint}")
        if result.best_checkpoint is not None:
            print(
                f"best checkpoint: {result.best_checkpoint} ({config.eval_metric} mAP {result.best_map:.4f})"
            )
        print(f"log: {Path(config.out) / 'log.jsonl'}")
    return 0
