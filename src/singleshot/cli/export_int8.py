"""``singleshot export --int8``: the options and the run of an int8 export with its accuracy report."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models.ssd import SSD

INT8_OPTIONS = ("calibration", "val_data", "threads")


def add_int8_options(parser: argparse.ArgumentParser) -> None:
    """The int8 options of ``singleshot export`` (a group of their own in --help)."""
    group = parser.add_argument_group(
        "int8 (ONNX only)",
        "Static post-training quantisation with ONNX Runtime (QDQ): weights int8 per output channel, "
        "activations uint8 with ranges measured on --calibration images; decoding and NMS stay float.",
    )
    add = group.add_argument
    add("--int8", action="store_true", help="write an int8 ONNX file (needs --calibration)")
    add("--calibration", metavar="DATA",
        help="images to calibrate on: a dataset root (VOC, COCO, YOLO, ...; its --calibration-split) or "
             "a folder of image files (searched recursively). Use images like the deployment's, not "
             "the test images")  # fmt: skip
    add("--calibration-images", type=int, default=100, metavar="N",
        help="calibration images, spread evenly over DATA (default 100)")  # fmt: skip
    add(
        "--calibration-split", default="train", help="split of a dataset root to calibrate on (default train)"
    )
    add("--float-layers", default="first", metavar="LAYERS",
        help="layers kept in float, comma-separated: first (the convolution reading the image), "
             "heads (the loc/conf predictors), none (default: first, measured faster in float and as "
             "accurate)")  # fmt: skip
    add("--val-data", metavar="DIR",
        help="also score the float and the int8 file on this dataset and time both: prints a table and "
             "writes the report beside OUT (m.int8.onnx -> m.int8.report.json)")  # fmt: skip
    add("--val-split", default="test", help="split of --val-data (default test)")
    add("--val-metric", choices=("voc07", "voc12", "coco"), default="voc07",
        help="metric of the report (default voc07)")  # fmt: skip
    add("--threads", type=int, default=None,
        help="ONNX Runtime threads when timing the report (default: one per core)")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bars")


def float_layers(text: str) -> tuple[str, ...]:
    """``--float-layers`` as a tuple: "first,heads" -> ("first", "heads"); "none" -> ()."""
    from ..export.int8 import FLOAT_LAYERS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in FLOAT_LAYERS]
    if unknown or not names:
        raise ValueError(
            f"--float-layers {text!r}: use none or any of {', '.join(FLOAT_LAYERS)}, comma-separated"
        )
    return names


def check_int8_options(args: argparse.Namespace) -> None:
    """Raise ValueError for int8 options that do not fit the rest of the command."""
    if not args.int8:
        given = [f"--{name.replace('_', '-')}" for name in INT8_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --int8 exports only")
        return
    if args.format not in ("onnx", "openvino"):
        raise ValueError(
            f"--int8 applies to --format onnx or openvino (ONNX Runtime quantisation), not {args.format}"
        )
    if args.calibration is None:
        raise ValueError("--int8 needs --calibration DATA: images to measure the activation ranges on")
    if args.calibration_images < 1:
        raise ValueError("--calibration-images must be >= 1")
    if args.freeze:
        raise ValueError("--freeze applies to --format torchscript only")
    if args.verify:
        raise ValueError("--verify compares with PyTorch at float precision; for int8 use --val-data DIR")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")


def report_path(output: str | Path) -> Path:
    """Where the report of ``output`` goes: ``model.int8.onnx`` -> ``model.int8.report.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def run_int8(args: argparse.Namespace, model: SSD, postprocess: dict[str, Any]) -> int:
    """Export float, calibrate, quantise into ``args.output``; with ``--val-data``, report
    the float and int8 files' mAP and speed. ``--format openvino``: the int8 ONNX file is
    converted to OpenVINO IR (`singleshot.export.onnx_to_openvino`, which keeps the QDQ
    nodes as int8 operations); the report then measures the two ONNX files."""
    from ..export import export_onnx, onnx_to_openvino
    from ..export.calibration import calibration_images
    from ..export.int8 import quantize_onnx

    layers = float_layers(args.float_layers)
    dataset = _open_val_data(args) if args.val_data else None
    images = calibration_images(args.calibration, args.calibration_images, args.calibration_split)
    print(f"calibrating on {len(images)} images of {images.source}")
    opset = {"opset": args.opset} if args.opset is not None else {}
    with tempfile.TemporaryDirectory(prefix="singleshot-float-") as tmp:
        reference = export_onnx(
            model, Path(tmp) / "float.onnx", with_postprocess=args.with_postprocess, **opset, **postprocess
        )
        to_ir = args.format == "openvino"
        target = Path(tmp) / "int8.onnx" if to_ir else args.output
        path = quantize_onnx(reference, target, images, float_layers=layers, progress=not args.no_progress)
        if to_ir:
            path = onnx_to_openvino(path, args.output)
        what = "detector (int8 network, float decoding and NMS)" if args.with_postprocess else "int8 network"
        print(f"wrote {path}: {model.preset} {what}, input (B, 3, {model.image_size}, {model.image_size}); "
              f"layers kept in float: {', '.join(layers) or 'none'}")  # fmt: skip
        if dataset is not None:
            _report(args, reference, target, dataset, images.source)
    return 0


def _open_val_data(args: argparse.Namespace) -> Any:
    from ..data import open_dataset

    dataset = open_dataset(args.val_data, split=args.val_split)
    if len(dataset) == 0:
        raise ValueError(f"{args.val_data}: split {args.val_split!r} has no images")
    return dataset


def _report(
    args: argparse.Namespace, reference: Path, quantized: Path, dataset: Any, calibration: str
) -> None:
    from ..export.compare import format_int8_report, int8_report
    from ..fileio import atomic_write_text

    report = int8_report(
        reference, quantized, dataset, metric=args.val_metric, threads=args.threads,
        progress=not args.no_progress,
    )  # fmt: skip
    report["float"]["file"] = None  # a float export of the same checkpoint, written for the report only
    report.update(checkpoint=str(args.checkpoint), data=str(args.val_data), split=args.val_split)
    report["calibration"] = calibration
    print(format_int8_report(report))
    if args.format == "openvino":  # measured as the int8 ONNX file the IR was converted from
        report["int8"]["file"] = str(args.output)
        report["int8"]["measured_as"] = "the int8 ONNX file converted to this IR, in ONNX Runtime"
    out = report_path(args.output)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
