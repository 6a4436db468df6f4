"""``singleshot detect``: run a checkpoint on images, draw the detections, write COCO results."""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .fastconv import add_fast_option, add_winograd_option

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.ssd import SSD


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images and draw them",
        description=(
            "Run a singleshot checkpoint on images. For each image, write a copy with the boxes, "
            "class names and scores drawn into --out, and write all detections into "
            "OUT/detections.json in the COCO results format ([x, y, w, h] pixels; image_id is the file "
            "name's number when every name is a number, as in COCO, else the file name; category_id "
            "is, by class name: the --categories file's id, else the id in the COCO set the checkpoint "
            "was trained on, else COCO's own id (1..90) for COCO's 80 classes, else the label). Images "
            "that cannot be read are reported and skipped; the others are still processed."
        ),
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="singleshot checkpoint (.pt or .safetensors)")
    add(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (their images, sorted) or glob patterns",
    )
    add("--out", default="detections", help="output folder (default: detections)")
    add("--threshold", type=float, default=0.5,
        help="keep detections scoring above this, in the pictures and the JSON (default 0.5; "
             "use 0.01 for results meant for mAP)")  # fmt: skip
    add("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    add("--device", default="cpu", choices=("cpu", "cuda"), help="where to run the model (default cpu)")
    add("--half", action="store_true", help="float16 inference (CUDA only)")
    add_fast_option(parser)
    add_winograd_option(parser)
    add("--categories", metavar="ANNOTATIONS_JSON",
        help="a COCO annotation file whose categories give each class's category_id, by name")  # fmt: skip
    add("--no-draw", action="store_true", help="only write detections.json, no pictures")
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


def file_categories(path: str) -> dict[str, int]:
    """{name: category id} of a COCO annotation file's "categories" list."""
    from ..data.coco import load_coco_json

    data = load_coco_json(Path(path))
    pairs = [(c.get("name"), c.get("id")) for c in data["categories"] if isinstance(c, dict)]
    named = [(n, i) for n, i in pairs if isinstance(n, str) and isinstance(i, int)]
    if not pairs or len(named) != len(pairs):
        raise ValueError(f"{path}: every category needs a string 'name' and an integer 'id'")
    return dict(named)


def label_to_category_map(model: SSD, categories: str | None = None) -> dict[int, int] | None:
    """{model label: COCO category id} for the results file, found by class name.

    In this order: the ids of ``categories`` (a COCO annotation file naming every class of
    the model); the ids of the set the model was trained on (``model.category_ids``); COCO's
    own ids (1..90) for a model of COCO's 80 classes (any order, or the 91-entry layout);
    else None (label = category id).
    """
    from ..classes import match_classes
    from ..data.common import BACKGROUND
    from ..weights.names import coco_names_91

    names = model.class_names
    if categories is not None:
        by_name = file_categories(categories)
        if names is None:
            raise ValueError(f"--categories {categories}: the checkpoint has no class names to look up")
        order = [BACKGROUND, *by_name]
        try:
            match = match_classes(names, order)
        except ValueError as error:
            raise ValueError(f"--categories {categories}: {error}") from None
        return {label: by_name[order[int(match.model_to_dataset[label])]] for label in range(1, len(names))}
    category_ids = getattr(model, "category_ids", None)
    if category_ids is not None:
        return dict(enumerate(category_ids))
    coco = {name: index for index, name in enumerate(coco_names_91()) if index > 0 and name != "N/A"}
    if names is not None and {name for name in names[1:] if name != "N/A"} == set(coco):
        return {label: coco.get(name, label) for label, name in enumerate(names) if label > 0}
    return None


def _check_options(args: argparse.Namespace) -> None:
    import torch

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.half and args.device != "cuda":
        raise ValueError("--half needs --device cuda (CPUs have no fast float16 convolutions)")


def _load_model(args: argparse.Namespace) -> tuple[SSD, dict[int, int] | None]:
    """(model ready to run, {label: category id} or None); errors come before any image is read."""
    from ..checkpoint import load
    from .fastconv import apply_fast, apply_layout, apply_winograd

    model = load(args.checkpoint, map_location=args.device)
    label_map = label_to_category_map(model, args.categories)
    model = apply_fast(model, args.fast, args.device, half=args.half)
    if args.half:
        model = model.half()
    else:
        apply_winograd(model, args.winograd, args.device)
    apply_layout(model, args.device, args.batch_size)
    return model, label_map


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluation import write_coco_results
    from ..pipeline import predict_files
    from ..visualize import draw_detections, save_image

    _check_options(args)
    paths = collect_images(args.inputs)
    model, label_map = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(paths, output_names(paths)))
    ids = dict(zip(paths, image_ids_for(paths)))

    done_paths: list[Path] = []
    detections: list[dict[str, Tensor]] = []
    skipped: list[tuple[Path, str]] = []
    progress = tqdm(total=len(paths), unit="img", desc="detect", disable=args.no_progress or len(paths) < 2)
    for item in predict_files(model, paths, batch_size=args.batch_size, score_threshold=args.threshold):
        progress.update(1)
        if item.error is not None:
            skipped.append((item.path, item.error))
            tqdm.write(f"skipped {item.error}", file=sys.stderr)
            continue
        assert item.image is not None and item.detections is not None  # read: both are set
        done_paths.append(item.path)
        detections.append(item.detections)
        if not args.no_draw:
            drawn = draw_detections(item.image, item.detections, model.class_names, score_threshold=0.0)
            save_image(drawn, out / names[item.path])
    progress.close()

    json_path = write_coco_results(
        detections, [ids[p] for p in done_paths], label_map, out / "detections.json"
    )
    total = sum(len(d["scores"]) for d in detections)
    print(f"{len(done_paths)} images, {total} detections (score > {args.threshold}) -> {json_path}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for _, error in skipped:
            print(f"  {error}", file=sys.stderr)
    return 0 if done_paths else 1
