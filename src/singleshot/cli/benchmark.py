"""``singleshot benchmark``: a model's speed in each deployment format on this machine, by stage,
with images/s and (given data) mAP; a table and a JSON file."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .modelfile import MODEL_HELP

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    from ..classes import ClassMatch
    from ..detector import Detector

DEFAULT_FORMATS = "torch,onnx,openvino,int8"
TIMING_IMAGES = "synthetic 500x375 images"
WARMUP = 2  # untimed runs of each format per batch size
TORCH_MADE = (
    "the checkpoint as `singleshot detect` and `eval` run it by default (BatchNorm folded, Winograd "
    "convolutions where they apply, the faster memory format)"
)
STATISTIC = (
    "per stage, the median over rounds x batches of the run's time / batch size; ms_per_image is the sum "
    "of the stages' medians; the formats take turns in each round, each running all batches in a row after "
    "a pause and 50 ms of untimed runs"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="time a model in PyTorch, ONNX Runtime, OpenVINO and int8 on this machine (and score each)",
        description=(
            "Time a model on this machine's CPU in each deployment format and print one row per format "
            "and batch size: ms per image in pre-processing (resize, mean, std of decoded images), the "
            "network, and post-processing (decoding, softmax, NMS, boxes to pixels), their total, "
            "images/s and, with --data, mAP as `singleshot eval` scores it. Formats: torch (the "
            "checkpoint as `singleshot detect` and `eval` run it by default: BatchNorm folded, Winograd "
            "convolutions, the faster memory format), onnx (float ONNX with decoding and NMS inside, "
            "ONNX Runtime), openvino (that file as OpenVINO IR, OpenVINO), int8 (that file statically "
            "quantised, ONNX Runtime). For a graph with NMS inside, the network figure includes decoding "
            "and NMS (marked *). All formats run the same batches, taking turns round after round (a "
            "change in the machine's load falls on all alike): a turn runs all batches in a row after a "
            "pause and 50 ms of untimed runs, so each format is timed warm, as a deployment runs it; "
            "each stage's figure is its median over rounds x batches, and the total is their sum. "
            "Also writes the figures with their spread, the CPU's name, the thread count and the "
            "runtimes' versions as JSON (--out). Formats that cannot run here are left out with the reason."
        ),
    )
    add = parser.add_argument
    add("--checkpoint", "--model", dest="checkpoint", required=True, metavar="MODEL",
        help=f"what to time: {MODEL_HELP}. An exported file gives the formats it can become: a "
             "float .onnx onnx, openvino and int8; an int8 .onnx int8; an .xml openvino; TorchScript "
             "torch")  # fmt: skip
    add("--formats", default=DEFAULT_FORMATS, metavar="LIST",
        help=f"comma-separated formats to time, in this order (default {DEFAULT_FORMATS})")  # fmt: skip
    add("--batch", type=int, nargs="+", default=[1, 8], metavar="B",
        help="batch sizes: images per run (default: 1 8); figures are per image")  # fmt: skip
    add("--threads", type=int, default=None, metavar="N",
        help="inference threads of every runtime: PyTorch's intra-op threads, ONNX Runtime's and "
             "OpenVINO's (default: PyTorch's default, one per core)")  # fmt: skip
    add("--data", metavar="DIR",
        help="a dataset root (VOC, COCO, YOLO, ...): time on its --split images and score each format "
             "on the whole split; int8 calibrates on its train split. Without it, the timing runs on "
             f"{TIMING_IMAGES} and no mAP is measured")  # fmt: skip
    add("--split", default="test", help="split of --data to time and score (default test)")
    add("--metric", choices=("voc07", "voc12", "coco"), default="voc07",
        help="mAP metric, as `singleshot eval --metric` (default voc07)")  # fmt: skip
    add("--rounds", type=int, default=10, help="timed rounds per batch size (default 10)")
    add("--images", type=int, default=8, metavar="N",
        help="images per round: each round runs ceil(N / B) batches of B (default 8)")  # fmt: skip
    add("--calibration", metavar="DATA",
        help="images int8 calibrates on: a dataset root (its train split) or a folder of images "
             "(default: --data's train split; without --data, the synthetic timing images, which time "
             "int8 fairly but say nothing of its accuracy)")  # fmt: skip
    add("--calibration-images", type=int, default=100, metavar="N",
        help="calibration images, spread evenly over the calibration data (default 100)")  # fmt: skip
    add("--work-dir", metavar="DIR",
        help="keep the exported files here (model.onnx, model.xml + .bin, model.int8.onnx); default: "
             "a temporary folder, deleted at the end")  # fmt: skip
    add("--out", default="benchmark.json", metavar="FILE",
        help="JSON file for the figures and the machine (default benchmark.json)")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    """Raise ValueError for options out of range, before any work."""
    counts = {"--rounds": args.rounds, "--images": args.images, "--threads": args.threads,
              "--calibration-images": args.calibration_images, "--batch": min(args.batch)}  # fmt: skip
    for option, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if args.calibration is not None and "int8" not in _format_names(args):
        raise ValueError("--calibration applies to the int8 format, which --formats leaves out")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: a folder; give the JSON file to write")
    if args.work_dir is not None and Path(args.work_dir).exists() and not Path(args.work_dir).is_dir():
        raise ValueError(f"--work-dir {args.work_dir}: not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create its folder: {error}") from None


def _format_names(args: argparse.Namespace) -> list[str]:
    return [name.strip() for name in args.formats.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import (
        busy_machine_note,
        environment,
        needs_calibration,
        plan_formats,
        source_kind,
        spinning_threads_note,
    )

    _check(args)
    args.batch = list(dict.fromkeys(args.batch))
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the command's own process
    threads = torch.get_num_threads()
    kind = source_kind(args.checkpoint)
    names, left_out = plan_formats(kind, _format_names(args))
    for name, reason in left_out.items():
        print(f"note: {name} left out: {reason}", file=sys.stderr)
    if not names:
        raise ValueError(f"{args.checkpoint}: none of the formats asked ({args.formats}) can run here")
    model = _open_source(args, kind)  # a bad file or classes that do not fit: errors before the work
    dataset = _open_data(args)
    classes = _match_classes(args, model, dataset) if dataset is not None else None
    images, images_from = _timing_images(args, dataset)
    calibration = _calibration(args, images) if needs_calibration(kind, names) else None
    document: dict[str, Any] = {"command": "singleshot benchmark", "source": str(args.checkpoint),
                                "source_kind": kind, **environment(threads)}  # fmt: skip
    for note in (busy_machine_note(document), spinning_threads_note(document, names)):
        if note is not None:
            print(f"note: {note}", file=sys.stderr)
    with _work_dir(args.work_dir) as folder:
        detectors, formats = _open_formats(args, model, names, folder, threads, calibration)
        maps = _score(args, detectors, dataset, classes) if dataset is not None else None
        rows = _time(args, detectors, images)
    document.update(_results(args, formats, left_out, rows, maps, images_from, len(images)))
    _print_summary(args, document, rows, maps)
    return 0


def _open_source(args: argparse.Namespace, kind: str) -> Any:
    """The model the formats are made from: a `singleshot.SSD` for a checkpoint (or published
    weights), else the exported file opened in its runtime."""
    from ..checkpoint import load
    from ..export import load_detector

    return load(args.checkpoint) if kind == "checkpoint" else load_detector(args.checkpoint)


def _match_classes(args: argparse.Namespace, model: Any, dataset: Any) -> ClassMatch:
    from ..evaluation.run import model_classes

    try:
        classes = model_classes(model, dataset)
    except ValueError as error:
        raise ValueError(f"{args.checkpoint} on {args.data}: {error}") from None
    if classes.note:
        print(f"note: {classes.note}", file=sys.stderr)
    return classes


def _open_data(args: argparse.Namespace) -> Any:
    from ..data import open_dataset

    if args.data is None:
        return None
    dataset = open_dataset(args.data, split=args.split)
    if len(dataset) == 0:
        raise ValueError(f"{args.data}: split {args.split!r} has no images")
    return dataset


def _timing_images(args: argparse.Namespace, dataset: Any) -> tuple[list[Tensor], str]:
    from ..benchmark import dataset_images, sample_images

    if dataset is None:
        return sample_images(args.images), TIMING_IMAGES
    return dataset_images(dataset, args.images), f"{args.data} ({args.split})"


@contextlib.contextmanager
def _work_dir(given: str | None) -> Iterator[Path]:
    if given is not None:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="singleshot-benchmark-") as folder:
        yield Path(folder)


def _open_formats(
    args: argparse.Namespace,
    model: Any,
    names: list[str],
    folder: Path,
    threads: int,
    calibration: tuple[Sequence[Tensor], str] | None,
) -> tuple[dict[str, Detector], dict[str, dict[str, Any]]]:
    """({format: detector}, {format: {"file", "made", "runtime"}}) in ``names``' order."""
    from ..benchmark import make_exports
    from ..export import runtime_of
    from ..models.ssd import SSD
    from .modelfile import open_model

    detectors: dict[str, Detector] = {}
    formats: dict[str, dict[str, Any]] = {}
    if "torch" in names:
        detectors["torch"] = open_model(args.checkpoint, "cpu", batch_size=max(args.batch))
        made = TORCH_MADE if isinstance(model, SSD) else "the TorchScript file, in PyTorch"
        formats["torch"] = {"file": str(args.checkpoint), "made": made}
    exported = [name for name in names if name != "torch"]
    if exported:
        source = model if isinstance(model, SSD) else args.checkpoint
        exports = make_exports(source, exported, folder, threads, calibration, not args.no_progress)
        detectors.update(exports.detectors)
        for name in exported:
            formats[name] = {"file": str(exports.files[name]), "made": exports.notes[name]}
    for name, detector in detectors.items():
        formats[name]["runtime"] = runtime_of(detector)
    return {name: detectors[name] for name in names}, {name: formats[name] for name in names}


def _calibration(args: argparse.Namespace, images: list[Tensor]) -> tuple[Sequence[Tensor], str]:
    """(images int8 calibrates on, where they come from), as ``--calibration`` and ``--data`` say."""
    from ..export.calibration import calibration_images

    if args.calibration is not None:
        chosen = calibration_images(args.calibration, args.calibration_images)
        return chosen, chosen.source
    if args.data is None:
        print("note: int8 calibrates on the synthetic timing images (no --data or --calibration): its "
              "speed is measured, its accuracy is not", file=sys.stderr)  # fmt: skip
        return images, f"the {TIMING_IMAGES}"
    try:
        chosen = calibration_images(args.data, args.calibration_images, split="train")
    except ValueError as error:
        raise ValueError(
            f"int8 calibrates on --data's train split: {error}; give --calibration DIR (images like the "
            "deployment's), or leave int8 out of --formats"
        ) from None
    return chosen, chosen.source


def _score(
    args: argparse.Namespace, detectors: dict[str, Detector], dataset: Any, classes: ClassMatch | None
) -> dict[str, float]:
    from ..benchmark import score_formats
    from .modelfile import eval_score_threshold

    for detector in detectors.values():
        eval_score_threshold(detector, None)  # notes an export whose NMS keeps fewer detections
    return score_formats(detectors, dataset, args.metric, classes, progress=not args.no_progress, say=print)


def _time(args: argparse.Namespace, detectors: dict[str, Detector], images: list[Tensor]) -> list[dict]:
    from tqdm import tqdm

    from ..benchmark import time_formats

    rounds = len(args.batch) * args.rounds
    with tqdm(total=rounds, desc="timing", unit="round", disable=args.no_progress) as bar:
        return time_formats(detectors, images, args.batch, args.rounds, WARMUP, lambda: bar.update())


def _results(
    args: argparse.Namespace,
    formats: dict[str, dict[str, Any]],
    left_out: dict[str, str],
    rows: list[dict[str, Any]],
    maps: dict[str, float] | None,
    images_from: str,
    image_count: int,
) -> dict[str, Any]:
    """The JSON's part that is not the machine: how it was timed, the formats and the rows."""
    for row in rows:
        row["map"] = None if maps is None else maps[row["format"]]
    timing = {
        "batches": args.batch,
        "rounds": args.rounds,
        "warmup_runs": WARMUP,
        "images": image_count,
        "images_from": images_from,
        "statistic": STATISTIC,
    }
    data = None if args.data is None else {"root": args.data, "split": args.split, "metric": args.metric}
    return {
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timing": timing,
        "data": data,
        "work_dir": args.work_dir,
        "formats": formats,
        "left_out": left_out,
        "rows": rows,
    }


def _print_summary(
    args: argparse.Namespace, document: dict[str, Any], rows: list[dict], maps: dict[str, float] | None
) -> None:
    from ..benchmark import format_benchmark_table
    from ..fileio import atomic_write_text

    print(format_benchmark_table(rows, maps, args.metric))
    timing = document["timing"]
    load = [document["load_average"], document["load_average_end"]]
    print(
        f"{document['cpu']}, threads: {document['threads']}; median of {args.rounds} rounds over "
        f"{timing['images']} images ({timing['images_from']}), formats in turns"
        + (f"; load average {load[0][0]:.2f} at the start, {load[1][0]:.2f} at the end" if all(load) else "")
    )
    out = Path(args.out)
    atomic_write_text(out, json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
