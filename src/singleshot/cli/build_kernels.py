"""``singleshot build-kernels``: build, list or clear the Winograd C kernels of CPU inference (and
list or clear the per-machine tuning cached beside them: memory-format decisions and Winograd
tile schedules)."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "build-kernels",
        help="build (or --list, or --clear) the C kernels of Winograd CPU inference",
        description=(
            "Compile the Winograd convolution kernels that `detect` and `eval` use on the CPU, once "
            "for this CPU and C compiler ($CC, else cc, gcc or clang), into the cache "
            "($SINGLESHOT_CACHE, else $XDG_CACHE_HOME/singleshot or ~/.cache/singleshot). Without "
            "this step they are built on first use. Then print the cache, the compiler, the kernel "
            "key (a hash of the source, compiler, flags and CPU) and the built files, and the "
            "cached memory-format decisions (channels-last or NCHW, timed once per machine and "
            "model by train, detect and eval; see singleshot.layout) and Winograd tile schedules "
            "(timed once per machine and layer shape by detect and eval; see "
            "singleshot.winograd.schedule)."
        ),
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--list", action="store_true", help="only print the cache's state; build nothing")
    group.add_argument(
        "--clear",
        action="store_true",
        help="delete the built kernels, cached layout decisions and tile schedules (nothing else)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..layout import clear_decisions
    from ..winograd.build import KernelBuildError, build_kernels
    from ..winograd.cache import cache_dir, clear_kernels
    from ..winograd.schedule import clear_schedules

    if args.clear:
        removed = clear_kernels()
        for path in removed:
            print(f"removed {path}")
        print(f"{len(removed)} built kernel file(s) removed from {cache_dir()}")
        decisions = clear_decisions()
        print(f"{len(decisions)} cached layout decision(s) removed")
        print(f"{len(clear_schedules())} cached Winograd tile schedule(s) removed")
        return 0
    if not args.list:
        try:
            path, compiled = build_kernels()
        except KernelBuildError as error:
            raise ValueError(str(error)) from None
        print(f"{'built' if compiled else 'already built'}: {path}")
    describe()
    return 0


def describe() -> None:
    """Print the cache folder, the compiler, this machine's kernel key and the built files."""
    from ..winograd.build import find_compiler, kernel_flags
    from ..winograd.cache import cache_dir, cpu_name, kernel_path, list_kernels

    origin = "$SINGLESHOT_CACHE" if os.environ.get("SINGLESHOT_CACHE") else "default"
    print(f"cache:    {cache_dir()} ({origin})")
    compiler = find_compiler()
    wanted = f"$CC={os.environ['CC']!r} not found" if os.environ.get("CC") else "no cc, gcc or clang"
    print(f"compiler: {compiler or f'none ({wanted} on the PATH)'}")
    current = kernel_path(compiler, kernel_flags(compiler)) if compiler else None
    key = "none (no compiler)"
    if current is not None:
        key = f"{current.stem.removeprefix('winograd-')} (hash of the source, compiler, flags and CPU)"
    print(f"cpu:      {cpu_name()}")
    print(f"key:      {key}")
    built = list_kernels()
    print(f"built:    {len(built)} file(s)")
    for path in built:
        mark = "  <- this CPU and compiler" if path == current else ""
        print(f"  {path.name}  {path.stat().st_size // 1024} KiB{mark}")
    describe_layouts()
    describe_schedules()


def describe_layouts() -> None:
    """Print the cached layout decisions: file, layout, mode, trial timings, where measured."""
    import json

    from ..layout import LayoutDecision, list_decisions

    files = list_decisions()
    print(f"layouts:  {len(files)} cached decision(s)")
    for path in files:
        try:
            decision = LayoutDecision.from_dict(json.loads(path.read_text(encoding="utf-8"))["decision"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"  {path.name}  unreadable ({error}): measured again on next use")
            continue
        print(f"  {path.name}  {decision.display_name} ({decision.mode}: {decision.describe_trial()})")


def describe_schedules() -> None:
    """Print the cached Winograd tile schedules: file, layer input and outputs, the choice."""
    import json

    from ..winograd.schedule import list_schedules

    files = list_schedules()
    print(f"schedules: {len(files)} cached Winograd tile schedule(s)")
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            key, tiles = data["key"], data["schedule"]["block_tiles"]
            layer = f"input {tuple(key['input'])} -> {key['out_channels']} channels, {key['threads']} threads"
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"  {path.name}  unreadable ({error}): measured again on next use")
            continue
        choice = "shared chunks" if tiles == 0 else f"blocks of {tiles} tiles"
        print(f"  {path.name}  {layer}: {choice}")
