"""``singleshot eval``: a checkpoint's AP on a dataset, as a table, metrics.json and a PR plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import add_coco_files_options, coco_files
from .fastconv import add_fast_option, add_winograd_option
from .modelfile import MODEL_HELP, add_runtime_option

if TYPE_CHECKING:
    import torch

    from ..classes import ClassMatch
    from ..detector import Detector

CLASS_MAP_HELP = (
    "a YAML or JSON file mapping dataset class names to the model's, one 'dataset name: model name' "
    'per line in YAML (e.g. \'automobile: car\'; JSON: {"automobile": "car"}); dataset classes not '
    "listed keep their own name, model classes no dataset class maps to are ignored"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure a checkpoint's (or an exported file's) average precision on a dataset",
        description=(
            "Run a singleshot checkpoint, or a file `singleshot export` wrote (ONNX, OpenVINO IR, "
            "TorchScript), over every image of a dataset split and score the detections: "
            "voc07 = PASCAL VOC2007 11-point mAP, voc12 = VOC2010+ area mAP (both exactly the official "
            "devkit's rules: IoU >= 0.5, difficult objects ignored), coco = COCO AP@[.50:.95] and the "
            "other 11 COCO numbers (pycocotools). Prints a per-class table and writes OUT/metrics.json "
            "and OUT/pr_curves.png (precision-recall curves of all classes). Classes are matched by "
            "name: the dataset may list the checkpoint's classes in another order (a note says so); "
            "other class names are an error unless --class-map relates them. COCO numbers use the "
            "annotation file's own category ids."
        ),
    )
    add = parser.add_argument
    add("--checkpoint", "--model", dest="checkpoint", required=True, metavar="MODEL",
        help=f"what to evaluate: {MODEL_HELP}; --model is the same option")  # fmt: skip
    add("--data", help="dataset root (a VOC20XX folder, a COCO or YOLO dataset folder, or an export of "
        "Roboflow, Ultralytics, CVAT or Label Studio); or --images/--annotations")  # fmt: skip
    add_coco_files_options(parser)
    add("--format", choices=("voc", "coco", "yolo"), default=None,
        help="dataset format (default: detected from the folder's layout)")  # fmt: skip
    add("--split", default="test", help="which split to evaluate, e.g. test, val, val2017 (default test)")
    add("--metric", choices=("voc07", "voc12", "coco"), default="voc07",
        help="voc07 (11-point, the SSD paper's VOC numbers; default), voc12 (area under the curve), "
             "coco (AP@[.50:.95], AP50, AP75, by size)")  # fmt: skip
    add(
        "--class-map",
        metavar="FILE",
        help=f"dataset classes named differently from the checkpoint's: {CLASS_MAP_HELP}",
    )
    add("--out", default="eval", help="folder for metrics.json and pr_curves.png (default: eval)")
    add("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    add(
        "--device",
        default="cpu",
        help="torch device to run the model on: cpu, cuda, cuda:1 ... (default cpu)",
    )
    add("--score-threshold", type=float, default=None,
        help="keep detections scoring above this before NMS (default: the model's, 0.01 for the VGG "
             "presets as in the paper; higher is faster but lowers AP). An export with NMS inside "
             "applies the threshold it was built with, and takes only a higher one")  # fmt: skip
    add("--workers", type=int, default=None,
        help="processes reading and decoding images (default: none when the model runs on the CPU, "
             "whose threads already use every core, up to 8 with a GPU; 0 = none)")  # fmt: skip
    add_runtime_option(parser)
    add_fast_option(parser)
    add_winograd_option(parser)
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def open_eval_data(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """(dataset, its source for messages, split or None) from ``--data`` or ``--images/--annotations``."""
    from ..data import open_coco, open_dataset

    if coco_files(args.images, args.annotations, args.data):
        return open_coco(args.images, args.annotations), args.annotations, None
    if args.data is None:
        raise ValueError("give --data PATH, or --images DIR --annotations FILE")
    return open_dataset(args.data, format=args.format, split=args.split), args.data, args.split


def _device(args: argparse.Namespace) -> torch.device:
    import torch

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise ValueError("--workers must be >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    return device


def loader_workers(workers: int | None, device: torch.device) -> int:
    """``--workers``, or when left out training's default for ``device``
    (`singleshot.training.data.default_workers`): none on the CPU, where worker processes
    compete with the model's threads for the cores (on 2 cores the demo's int8 file
    evaluated at 5.49 ms per image with 2 workers, 2.58 without; SSD300 171 against 156
    ms), up to 8 with a GPU. Exported files (ONNX Runtime, OpenVINO) run on the CPU."""
    from ..training.data import default_workers

    return default_workers(device.type) if workers is None else workers


def _match_classes(args: argparse.Namespace, model: Detector, dataset: Any, source: str) -> ClassMatch:
    from ..evaluation.run import model_classes

    try:
        classes = model_classes(model, dataset, args.class_map)
    except ValueError as error:
        raise ValueError(f"{args.checkpoint} on {source}: {error}") from None
    if classes.note:
        print(f"note: {classes.note}", file=sys.stderr)
    return classes


def _write_outputs(
    args: argparse.Namespace,
    result: dict[str, Any],
    data_names: list[str],
    source: str,
    split: str | None,
    runtime: str,
) -> None:
    from ..evaluation import plot_pr_curves, write_metrics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(
        out / "metrics.json",
        result,
        data_names,
        checkpoint=str(args.checkpoint),
        data=str(source),
        split=split,
        class_map=args.class_map,
        score_threshold=args.score_threshold,
        runtime=runtime,
    )
    on = f"{Path(source).name}/{split}" if split else Path(source).name
    title = f"{Path(args.checkpoint).name} on {on} ({args.metric})"
    plot_pr_curves(result["curves"], data_names, out / "pr_curves.png", title=title, ap=result["ap"])
    print(f"wrote {out / 'metrics.json'} and {out / 'pr_curves.png'}")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_model, format_table
    from ..export import runtime_of
    from .modelfile import eval_score_threshold, open_model

    device = _device(args)
    model = open_model(
        args.checkpoint,
        device,
        args.runtime,
        fast=args.fast,
        winograd=args.winograd,
        batch_size=args.batch_size,
    )
    args.score_threshold = eval_score_threshold(model, args.score_threshold)
    dataset, source, split = open_eval_data(args)
    if len(dataset) == 0:
        raise ValueError(f"{source}: {f'split {split!r} ' if split else ''}has no images")
    data_names = list(dataset.classes)
    classes = _match_classes(args, model, dataset, source)
    result = evaluate_model(
        model,
        dataset,
        metric=args.metric,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        num_workers=loader_workers(args.workers, device),
        score_threshold=args.score_threshold,
        classes=classes,
    )
    print(format_table(result, data_names))
    _write_outputs(args, result, data_names, source, split, runtime_of(model))
    return 0
