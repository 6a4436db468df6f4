"""``singleshot detect``: run a checkpoint on images (pictures with the detections drawn, COCO
results) and on videos, cameras and streams (`singleshot.cli.detect_video`)."""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fastconv import add_fast_option, add_winograd_option
from .modelfile import MODEL_HELP, add_runtime_option

if TYPE_CHECKING:
    from ..detector import Detector
    from ..video import VideoSource


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images, videos, cameras and streams, and draw them",
        description=(
            "Run a singleshot checkpoint on images. For each image, write a copy with the boxes, "
            "class names and scores drawn into --out, and write all detections into "
            "OUT/detections.json in the COCO results format ([x, y, w, h] pixels; image_id is the file "
            "name's number when every name is a number, as in COCO, else the file name; category_id "
            "is, by class name: the --categories file's id, else the id in the COCO set the checkpoint "
            "was trained on, else COCO's own id (1..90) for COCO's 80 classes, else the label). Images "
            "that cannot be read are reported and skipped; the others are still processed. "
            "Videos (.mp4, .avi, .mkv, .webm, ...), cameras (an index: 0) and streams (rtsp://, "
            "http://, ...) give OUT/NAME.mp4, the video with the detections drawn (same size and frame "
            'rate), and OUT/NAME.jsonl, one line per frame: {"frame": index, "time": seconds, '
            '"detections": COCO results with image_id = frame index}. A camera or stream is read in '
            "a thread and frames that arrive while the model is busy are skipped, so the output stays "
            "live; stop it with Ctrl-C or --max-frames. Video needs PyAV: pip install 'singleshot[video]'."
        ),
    )
    add = parser.add_argument
    add("--model", "--checkpoint", dest="checkpoint", required=True, metavar="NAME|FILE",
        help=f"what to run: {MODEL_HELP}; --checkpoint is the same option")  # fmt: skip
    add(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (their images, sorted) or glob patterns; video files, "
        "camera indices or stream URLs",
    )
    add("--source", action="append", default=[], metavar="SOURCE",
        help="a video file, camera index (0 = the first camera) or stream URL; repeatable")  # fmt: skip
    add("--max-frames", type=int, metavar="N",
        help="stop each video, camera or stream after N frames (default: until it ends)")  # fmt: skip
    add("--out", default="detections", help="output folder (default: detections)")
    add("--threshold", type=float, default=0.5,
        help="keep detections scoring above this, in the pictures and the JSON (default 0.5; "
             "use 0.01 for results meant for mAP)")  # fmt: skip
    add("--batch-size", type=int, default=8,
        help="images (or frames of a video file) per forward pass (default 8)")  # fmt: skip
    add("--device", default="cpu", choices=("cpu", "cuda"), help="where to run the model (default cpu)")
    add("--half", action="store_true", help="float16 inference (CUDA only)")
    add_runtime_option(parser)
    add_fast_option(parser)
    add_winograd_option(parser)
    add("--categories", metavar="ANNOTATIONS_JSON",
        help="a COCO annotation file whose categories give each class's category_id, by name")  # fmt: skip
    add("--no-draw", action="store_true",
        help="only the JSON (detections.json, a video's .jsonl): no pictures, no drawn videos")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders (non-recursive, sorted) and glob patterns into image paths, in order.

    Explicitly named files are kept whatever their suffix (a bad one is reported later);
    folders and globs contribute files with an image suffix. Duplicates are dropped.

    Raises:
        ValueError: an input matches nothing.
    """
    from ..imageio import IMAGE_SUFFIXES

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(item):
            matches = sorted(
                Path(p) for p in glob.glob(item, recursive=True)
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
            )  # fmt: skip
        else:
            raise ValueError(f"{item}: no such file or folder")
        if not matches:
            raise ValueError(f"{item}: no images found")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(p) for p in unique]


def image_ids_for(paths: Sequence[Path]) -> list[int] | list[str]:
    """COCO image ids: the file stems as integers when all are distinct numbers, else the file names."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return [p.name for p in paths]


def output_names(paths: Sequence[Path]) -> list[str]:
    """Picture names in the output folder: the file name, with a counter where two would clash."""
    names: list[str] = []
    seen: set[str] = set()
    for path in paths:
        suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        name, n = f"{path.stem}{suffix}", 1
        while name in seen or name == "detections.json":
            name, n = f"{path.stem}_{n}{suffix}", n + 1
        seen.add(name)
        names.append(name)
    return names


def _check_options(args: argparse.Namespace) -> None:
    import torch

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError("--max-frames must be >= 1")
    if not args.inputs and not args.source:
        raise ValueError("name at least one INPUT or --source")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.half and args.device != "cuda":
        raise ValueError("--half needs --device cuda (CPUs have no fast float16 convolutions)")


def _load_model(args: argparse.Namespace) -> tuple[Detector, dict[int, int] | None]:
    """(model ready to run, {label: category id} or None); errors come before any image is read.

    A checkpoint or an exported file (`open_model`); a graph with NMS inside may raise
    ``args.threshold`` to the score threshold it was built with (with a note).
    """
    from ..categories import label_to_category_map
    from .modelfile import detect_threshold, open_model

    model = open_model(
        args.checkpoint,
        args.device,
        args.runtime,
        fast=args.fast,
        winograd=args.winograd,
        half=args.half,
        batch_size=args.batch_size,
    )
    label_map = label_to_category_map(
        model.class_names, getattr(model, "category_ids", None), args.categories
    )
    args.threshold = detect_threshold(model, args.threshold)
    return model, label_map


def split_inputs(inputs: Sequence[str]) -> tuple[list[str], list[VideoSource]]:
    """(image inputs, video sources): video files, camera indices and stream URLs are the
    video sources (see `singleshot.video.parse_source`); the rest are images, folders and globs."""
    from ..video import parse_source

    images: list[str] = []
    videos: list[VideoSource] = []
    for item in inputs:
        source = parse_source(item)
        if source is None:
            images.append(item)
        else:
            videos.append(source)
    return images, videos


def run(args: argparse.Namespace) -> int:
    from .detect_video import check_video_support, detect_videos

    _check_options(args)
    image_inputs, videos = split_inputs([*args.inputs, *args.source])
    paths = collect_images(image_inputs) if image_inputs else []
    if videos:
        check_video_support()
    model, label_map = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code = detect_images(model, label_map, paths, args, out) if paths else 0
    if videos:
        code = max(code, detect_videos(model, label_map, videos, args, out))
    return code


def detect_images(
    model: Detector, label_map: dict[int, int] | None, paths: list[Path], args: argparse.Namespace, out: Path
) -> int:
    """Draw each image's detections into ``out`` and write ``out/detections.json``; 1 when no
    image could be read."""
    import json

    from tqdm import tqdm

    from ..fileio import atomic_write_text
    from ..pipeline import predict_files

    names = dict(zip(paths, output_names(paths)))
    ids: dict[Path, int | str] = dict(zip(paths, image_ids_for(paths)))
    done = 0
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    progress = tqdm(total=len(paths), unit="img", desc="detect", disable=args.no_progress or len(paths) < 2)
    for item in predict_files(model, paths, batch_size=args.batch_size, score_threshold=args.threshold):
        progress.update(1)
        if item.detections is None:
            skipped.append(str(item.error))
            tqdm.write(f"skipped {item.error}", file=sys.stderr)
            continue
        done += 1
        results.extend(item.detections.to_json(ids[item.path], label_to_category_id=label_map))
        if not args.no_draw:
            item.detections.save(out / names[item.path], score_threshold=0.0)
    progress.close()

    json_path = out / "detections.json"
    atomic_write_text(json_path, json.dumps(results))
    print(f"{done} images, {len(results)} detections (score > {args.threshold}) -> {json_path}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for error in skipped:
            print(f"  {error}", file=sys.stderr)
    return 0 if done else 1
