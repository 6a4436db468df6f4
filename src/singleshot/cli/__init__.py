"""The ``singleshot`` command: one entry point, a sub-command per job.

Each sub-command lives in its own module of this package with a
``register(subparsers)`` function that adds its parser and sets ``func``.
Modules import torch-heavy code inside their ``run`` functions so that
``singleshot --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser"]

COMMAND_MODULES = (
    "priors",
    "train",
    "demo",
    "convert",
    "export",
    "detect",
    "eval",
    "benchmark",
    "data",
    "build_kernels",
    "models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="singleshot",
        description="SSD (Single Shot MultiBox Detector): train, evaluate, detect, export.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from ..runtime import tune_malloc

    tune_malloc()
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # bad input, or a file that cannot be read or written
        print(f"singleshot {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
