"""``singleshot priors PRESET``: what the default boxes of a preset look like."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "priors",
        help="print a preset's default boxes per level",
        description=(
            "Print, per feature-map level of a preset: the grid, boxes per cell, box count, "
            "the box sizes in pixels, and how many boxes reach outside the image before clipping."
        ),
    )
    parser.add_argument("preset", help="model preset, e.g. ssd300_voc (see `singleshot priors --list`)")
    parser.add_argument("--clip", choices=("center", "size", "none"), default=None, help="prior clipping")
    parser.set_defaults(func=run)


def format_priors(name: str, clip: str | None = None) -> str:
    from ..presets import get_preset
    from ..priors import count_outside, generate_priors, level_box_sizes

    config = get_preset(name).prior_config.with_clip(clip)
    outside = count_outside(config)
    lines = [
        f"{name}: {config.image_size}x{config.image_size} input, clip={config.clip}",
        f"{'level':>5} {'grid':>7} {'step':>6} {'per cell':>8} {'boxes':>7} {'outside':>7}  sizes (w x h px)",
    ]
    for level, (grid, per_cell) in enumerate(zip(config.feature_maps, config.boxes_per_location)):
        size = config.image_size
        sizes = ", ".join(f"{w * size:.0f}x{h * size:.0f}" for w, h in level_box_sizes(config, level))
        lines.append(
            f"{level:>5} {f'{grid}x{grid}':>7} {config.steps[level]:>6.4g} {per_cell:>8} "
            f"{grid * grid * per_cell:>7} {outside[level]:>7}  {sizes}"
        )
    total = generate_priors(config).shape[0]
    lines.append(f"total: {total} default boxes, {sum(outside)} reach outside the image before clipping")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(format_priors(args.preset, args.clip))
    return 0
