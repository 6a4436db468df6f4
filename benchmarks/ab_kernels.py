"""This checkout's Winograd kernels against another revision's, on SSD300's default CPU path, in turns.

    .venv/bin/python benchmarks/ab_kernels.py REV [--batches 1 8] [--rounds 12] [--threads 2]

Builds ``src/singleshot/winograd/kernels.c`` as it is at git revision REV with this machine's
compiler and this checkout's flags, makes ``optimize_for_inference()``'s copy of SSD300
(random weights, tile schedules timed with this checkout's kernels) and times its forward on
a random batch with each library in turn, the order reversed every other round: a change to
the kernels measured in one process, where runs of `bench_infer.py` minutes apart differ by
more than the change on a shared machine. Prints the median and fastest ms per image of each
and the largest difference between their outputs.

REV's kernels must have this checkout's C functions and arguments (the script compares the
exported functions' prototypes and stops if they differ).
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import singleshot
from singleshot.runtime import tune_malloc
from singleshot.winograd import build as kernel_build
from singleshot.winograd.cache import SOURCE

PROTOTYPE = re.compile(r"^(?:void|int) (winograd_\w+)\(([^)]*)\)", re.MULTILINE)


def prototypes(source: str) -> dict[str, str]:
    """{exported function: its parameter list, whitespace normalised}."""
    return {name: " ".join(params.split()) for name, params in PROTOTYPE.findall(source)}


def build_revision(revision: str, folder: Path) -> ctypes.CDLL:
    """REV's kernels.c compiled as this checkout's kernels are, loaded with their signatures."""
    relative = SOURCE.relative_to(Path(__file__).resolve().parents[1])
    source = subprocess.run(
        ["git", "show", f"{revision}:{relative.as_posix()}"], capture_output=True, text=True, check=True
    ).stdout
    if prototypes(source) != prototypes(SOURCE.read_text()):
        raise SystemExit(f"{revision}'s kernels have other functions or arguments than this checkout's")
    compiler = kernel_build.find_compiler()
    if compiler is None:
        raise SystemExit("no C compiler")
    (folder / "kernels.c").write_text(source)
    library = folder / "kernels.so"
    flags = kernel_build.kernel_flags(compiler)
    subprocess.run([compiler, *flags, "-o", str(library), str(folder / "kernels.c")], check=True)
    return kernel_build.declare_signatures(ctypes.CDLL(str(library)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("revision", help="a git revision whose kernels.c to compare with (e.g. HEAD~1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--rounds", type=int, default=12, help="timed forwards of each (default 12)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    torch.manual_seed(0)
    model = singleshot.build_model("ssd300_voc", num_classes=21).eval()
    fast = model.optimize_for_inference(batch_size=max(args.batches))
    with tempfile.TemporaryDirectory() as folder:
        libraries = {
            args.revision: build_revision(args.revision, Path(folder)),
            "this": kernel_build.load_kernels(),
        }
        print(f"ssd300, torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds in turns")
        try:
            for batch in args.batches:
                compare(fast, libraries, batch, args.rounds)
        finally:
            kernel_build._loaded = libraries["this"]


def compare(fast: torch.nn.Module, libraries: dict[str, ctypes.CDLL], batch: int, rounds: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    x = (torch.randn(batch, 3, 300, 300, generator=generator) * 50).contiguous(
        memory_format=torch.channels_last
    )
    seconds: dict[str, list[float]] = {name: [] for name in libraries}
    outputs = {}
    with torch.inference_mode():
        for name, library in libraries.items():
            kernel_build._loaded = library  # what load_kernels() hands the operator
            outputs[name] = fast(x)
        for index in range(rounds):
            for name in list(libraries)[:: 1 if index % 2 == 0 else -1]:
                kernel_build._loaded = libraries[name]
                start = time.perf_counter()
                fast(x)
                seconds[name].append(time.perf_counter() - start)
    first, second = outputs.values()
    difference = max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))
    row = ", ".join(
        f"{name} {statistics.median(times) * 1e3 / batch:.1f} (fastest {min(times) * 1e3 / batch:.1f})"
        for name, times in seconds.items()
    )
    ratio = statistics.median(seconds[next(iter(libraries))]) / statistics.median(seconds["this"])
    print(f"batch {batch}: ms/image {row}; this checkout {ratio:.3f}x; outputs differ by {difference:.1e}")


if __name__ == "__main__":
    main()
