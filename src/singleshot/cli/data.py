"""``singleshot data synth | check | show | coverage``: make, inspect and measure datasets."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.common import DetectionDataset

FORMAT_HELP = "dataset format: voc, coco or yolo (default: detected from the folder layout)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "data",
        help="make, validate, picture and measure detection datasets",
        description="Dataset tools. Run `singleshot data ACTION --help` for each action.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
    _register_synth(actions)
    _register_check(actions)
    _register_show(actions)
    _register_coverage(actions)


def _register_synth(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "synth",
        help="write the synthetic shapes dataset in VOC, COCO or YOLO format",
        description=(
            "Write a seeded synthetic detection dataset (six shape classes of distinct colours on "
            "cluttered backgrounds, with occlusion and empty images) with splits 'train' and 'test'. "
            "The same arguments give the same bytes."
        ),
    )
    parser.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument(
        "--format", choices=("voc", "coco", "yolo"), default="voc", help="layout (default: voc)"
    )
    parser.add_argument(
        "--num-train", type=int, default=1000, help="images in the train split (default: 1000)"
    )
    parser.add_argument("--num-test", type=int, default=200, help="images in the test split (default: 200)")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default: 160)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--max-objects", type=int, default=5, help="most objects per image (default: 5)")
    parser.add_argument(
        "--min-size", type=float, default=0.12,
        help="smallest object, sqrt(area) as a fraction of the side (default: 0.12)",
    )  # fmt: skip
    parser.add_argument(
        "--max-size", type=float, default=0.75,
        help="largest object, sqrt(area) as a fraction of the side (default: 0.75)",
    )  # fmt: skip
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace what an earlier run of this format wrote in OUT",
    )  # fmt: skip
    parser.set_defaults(func=run_synth)


def _register_check(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "check",
        help="validate a dataset and print its statistics",
        description=(
            "Read every annotation (and check every image) of the dataset's splits, then print per split: "
            "objects per class, difficult/crowd counts, histograms of box size and aspect ratio, the "
            "fixed-up problems (boxes clipped to the image) and the list of invalid files. "
            "Exit status 1 when anything is invalid."
        ),
    )
    parser.add_argument(
        "path", nargs="?",
        help="dataset folder (VOC20XX, COCO or YOLO layout, one written by synth, or an export of Roboflow, "
             "Ultralytics, CVAT or Label Studio); leave out with --images/--annotations",
    )  # fmt: skip
    add_coco_files_options(parser)
    parser.add_argument("--format", choices=("voc", "coco", "yolo"), default=None, help=FORMAT_HELP)
    parser.add_argument(
        "--split", action="append", default=None,
        help="split to check; repeat for several (default: every split found)",
    )  # fmt: skip
    parser.add_argument(
        "--verify", choices=("quick", "full", "none"), default="quick",
        help="image check: quick = header and end marker (default), full = decode every image, none = skip",
    )  # fmt: skip
    parser.add_argument(
        "--max-listed", type=int, default=50, help="invalid files listed per split (default: 50)"
    )
    parser.set_defaults(func=run_check)


def add_coco_files_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--images DIR --annotations FILE``: a COCO dataset given by its files, in no layout."""
    parser.add_argument(
        f"--{prefix}images", metavar="DIR",
        help="COCO image folder (the JSON's file_name entries are relative to it); with --annotations",
    )  # fmt: skip
    parser.add_argument(f"--{prefix}annotations", metavar="FILE", help="COCO instances JSON; with --images")


def coco_files(images: str | None, annotations: str | None, folder: str | None = None) -> bool:
    """Whether ``--images``/``--annotations`` are used; both or neither, and not with a folder."""
    if (images is None) != (annotations is None):
        raise ValueError("--images and --annotations go together (a COCO image folder and its JSON)")
    if images is not None and folder is not None:
        raise ValueError(f"give a dataset folder ({folder}) or --images/--annotations, not both")
    return images is not None


def _register_show(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "show",
        help="save a picture of samples with their boxes",
        description=(
            "Save a grid of randomly chosen samples with their boxes and class names, as stored or, with "
            "--augment, after the training augmentation (what the network sees)."
        ),
    )
    parser.add_argument("path", help="dataset folder")
    parser.add_argument("--out", required=True, help="output image file, e.g. grid.png")
    parser.add_argument("--format", choices=("voc", "coco", "yolo"), default=None, help=FORMAT_HELP)
    parser.add_argument("--split", default="train", help="split to show (default: train)")
    parser.add_argument("--num", type=int, default=16, help="number of samples (default: 16)")
    parser.add_argument("--columns", type=int, default=None, help="grid columns (default: about square)")
    parser.add_argument(
        "--cell", type=int, default=256, help="side of each grid cell in pixels (default: 256)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the choice of samples and the augmentation"
    )
    parser.add_argument(
        "--augment", action="store_true",
        help="show the samples after SSDAugmentation (photometric, expand, crop, flip, resize)",
    )  # fmt: skip
    parser.add_argument(
        "--model", default="ssd300_voc",
        help="preset whose input size and mean the augmentation uses (default: ssd300_voc)",
    )  # fmt: skip
    parser.set_defaults(func=run_show)


def _register_coverage(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "coverage",
        help="how well a preset's default boxes fit the dataset's boxes",
        description=(
            "For every box of the split (stretched to the square input, as the network sees it), find the "
            "default box with the highest IoU; print the share of boxes whose best default box reaches the "
            "threshold, overall, by box size and by feature-map level. A low share for small boxes means the "
            "preset's default boxes are too large for this data."
        ),
    )
    parser.add_argument("path", help="dataset folder")
    parser.add_argument(
        "--model", default="ssd300_voc", help="preset whose default boxes to test (default: ssd300_voc)"
    )
    parser.add_argument("--format", choices=("voc", "coco", "yolo"), default=None, help=FORMAT_HELP)
    parser.add_argument("--split", default="train", help="split to measure (default: train)")
    parser.add_argument("--threshold", type=float, default=0.5, help="matching IoU threshold (default: 0.5)")
    parser.add_argument(
        "--clip", choices=("center", "size", "none"), default=None,
        help="prior clipping mode (default: the preset's)",
    )  # fmt: skip
    parser.set_defaults(func=run_coverage)


def run_synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_dataset

    out = write_dataset(
        args.out,
        format=args.format,
        num_train=args.num_train,
        num_test=args.num_test,
        size=args.size,
        seed=args.seed,
        quality=args.quality,
        overwrite=args.overwrite,
        progress=None,
        max_objects=args.max_objects,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    print(f"wrote {args.num_train} train + {args.num_test} test images ({args.format}) to {out}")
    return 0


def check_split(
    path: str | None,
    format: str | None,
    split: str,
    verify: str,
    max_listed: int,
    coco: tuple[str, str] | None = None,
) -> tuple[str, int]:
    """The report of one split and its number of invalid items (a split that cannot be opened counts 1).

    ``coco``: (image folder, annotation file) instead of a dataset folder.
    """
    from ..data import open_coco, open_dataset
    from ..data.stats import dataset_stats, format_stats

    options: dict[str, Any] = dict(skip_invalid=True, verify_images=verify, progress=None)
    dataset: DetectionDataset
    try:
        with warnings.catch_warnings():  # the report lists the fixed-up problems itself
            warnings.simplefilter("ignore", UserWarning)
            if coco is not None:
                dataset = open_coco(*coco, **options)
            elif path is None:
                raise ValueError("give a dataset folder or coco=(image folder, annotation file)")
            else:
                dataset = open_dataset(path, format=format, split=split, **options)
    except ValueError as error:
        return f"== {split}: cannot be read\n  {error}", 1
    stats = format_stats(dataset_stats(dataset), crowd_name=dataset.difficult_name)
    lines = [f"== {split}: {dataset!r}", stats]
    for kind, count in dataset.warnings.items():
        lines.append(f"warning: {count} {kind}")
    if dataset.skipped:
        lines.append(f"invalid: {len(dataset.skipped)} item(s) left out")
        for file, reason in dataset.skipped[:max_listed]:
            lines.append(f"  {file}: {reason}")
        if len(dataset.skipped) > max_listed:
            lines.append(f"  ... and {len(dataset.skipped) - max_listed} more")
    else:
        lines.append("invalid: none")
    return "\n".join(lines), len(dataset.skipped)


def run_check(args: argparse.Namespace) -> int:
    from ..data.registry import describe_layout, detect_format, list_splits

    coco = None
    if coco_files(args.images, args.annotations, args.path):
        coco, format, splits = (args.images, args.annotations), "coco", [Path(args.annotations).stem]
        print(f"{args.annotations}: coco dataset, images in {args.images}")
        print("layout: COCO files (--images, --annotations)")
    elif args.path is None:
        raise ValueError("give a dataset folder, or --images DIR --annotations FILE")
    else:
        format = args.format or detect_format(args.path)
        splits = args.split or list_splits(args.path, format)
        if not splits:
            raise ValueError(f"{args.path}: no splits found")
        print(f"{args.path}: {format} dataset, splits: {', '.join(splits)}")
        print(f"layout: {describe_layout(args.path, format)}")
    invalid = 0
    for split in splits:
        report, count = check_split(args.path, format, split, args.verify, args.max_listed, coco)
        print(report)
        invalid += count
    print(f"{'INVALID' if invalid else 'OK'}: {invalid} invalid item(s)")
    return 1 if invalid else 0


def run_show(args: argparse.Namespace) -> int:
    import random

    import torch

    from ..data import open_dataset
    from ..data.show import sample_grid
    from ..presets import get_preset
    from ..visualize import save_picture

    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    dataset = open_dataset(args.path, format=args.format, split=args.split, progress=None)
    if len(dataset) == 0:
        raise ValueError(f"{args.path}: split {args.split!r} has no images")
    indices = sorted(random.Random(args.seed).sample(range(len(dataset)), min(args.num, len(dataset))))
    preset = get_preset(args.model)
    augment = None
    if args.augment:
        from ..data.augment import SSDAugmentation

        generator = torch.Generator().manual_seed(args.seed)
        augment = SSDAugmentation(
            preset.prior_config.image_size, preset.image_mean, generator=generator, std=preset.image_std
        )
    grid = sample_grid(
        dataset,
        indices,
        augment,
        preset.image_mean,
        columns=args.columns,
        cell=args.cell,
        std=preset.image_std,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_picture(grid, out)
    print(f"wrote {len(indices)} samples{' (augmented)' if augment else ''} to {out}")
    return 0


def run_coverage(args: argparse.Namespace) -> int:
    from ..data import open_dataset
    from ..data.coverage import format_coverage, prior_coverage
    from ..presets import get_preset

    config = get_preset(args.model).prior_config.with_clip(args.clip)
    dataset = open_dataset(args.path, format=args.format, split=args.split, progress=None)
    coverage = prior_coverage(dataset, config, threshold=args.threshold, progress=None)
    print(format_coverage(coverage, f"{args.model} on {args.path} ({args.split})"))
    return 0
