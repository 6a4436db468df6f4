"""Per-layer speed of `singleshot.winograd` against oneDNN's direct convolution.

    .venv/bin/python benchmarks/bench_winograd.py [--batch 8] [--repeats 5] [--threads 2] [--schedules]

For each 3x3 convolution of SSD300's VGG16 (conv1_2 ... conv5_3, at its map size),
times, in the same process, oneDNN's channels-last ``conv2d`` followed by an in-place
ReLU (what the eager model runs) and the Winograd operator with its filters packed once,
as `WinogradConv2d` runs it (bias and ReLU inside the output transform), on the same
random input and filters; median of
``--repeats`` after one warm-up. Also prints the relative error of each against a
float64 ``conv2d``. This is what chose ``optimize.BACKBONE_MIN_CHANNELS``.

``--schedules`` instead times, per layer, the Winograd operator under each tile schedule
`singleshot.winograd.schedule.tune_winograd` chooses from (shared chunks, per-thread blocks
of 6 to 48 tiles) and under the fixed rule that came before it, the schedules in turns;
median ms of ``--repeats`` rounds, and the fastest.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from singleshot.runtime import tune_malloc
from singleshot.winograd import pack_filters, transform_weight
from singleshot.winograd.conv import conv_packed

# (name, in, out, map size at 300 px); conv1_1 (3 input channels) has nothing to gain.
LAYERS = (
    ("conv1_2", 64, 64, 300),
    ("conv2_1", 64, 128, 150),
    ("conv2_2", 128, 128, 150),
    ("conv3_1", 128, 256, 75),
    ("conv3_2", 256, 256, 75),
    ("conv4_1", 256, 512, 38),
    ("conv4_2", 512, 512, 38),
    ("conv5_1", 512, 512, 19),
)


def median_seconds(fn, repeats: int) -> float:
    fn()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def time_layer(cin: int, cout: int, size: int, batch: int, repeats: int, generator) -> tuple[float, ...]:
    """-> (direct seconds, Winograd seconds, direct relative error, Winograd relative error)."""
    x = torch.randn(batch, cin, size, size, generator=generator).relu() * 10
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=generator) * (2 / (9 * cin)) ** 0.5
    bias = torch.randn(cout, generator=generator) * 0.1
    weight_cl = weight.contiguous(memory_format=torch.channels_last)
    filters = pack_filters(transform_weight(weight))
    with torch.inference_mode():
        direct = median_seconds(lambda: F.conv2d(x, weight_cl, bias, padding=1).relu_(), repeats)
        winograd = median_seconds(lambda: conv_packed(x, filters, bias, relu=True), repeats)
        reference = F.conv2d(x[:1].double(), weight.double(), bias.double(), padding=1).relu()
        scale = reference.abs().max()
        err_direct = (F.conv2d(x[:1], weight_cl, bias, padding=1).relu() - reference).abs().max() / scale
        err_winograd = (conv_packed(x[:1], filters, bias, relu=True) - reference).abs().max() / scale
    return direct, winograd, float(err_direct), float(err_winograd)


def time_schedules(cin: int, cout: int, size: int, batch: int, repeats: int, generator) -> dict[str, float]:
    """{schedule name: median seconds} of the Winograd operator on one layer, in turns."""
    from singleshot.winograd.ops import BY_RULE
    from singleshot.winograd.schedule import CANDIDATES

    x = (
        torch.randn(batch, cin, size, size, generator=generator)
        .relu()
        .contiguous(memory_format=torch.channels_last)
    )
    filters = pack_filters(transform_weight(torch.randn(cout, cin, 3, 3, generator=generator) * 0.05))
    bias = torch.zeros(cout)
    names = {tiles: "chunks" if tiles == 0 else f"blocks {tiles}" for tiles in CANDIDATES} | {BY_RULE: "rule"}
    times: dict[str, list[float]] = {name: [] for name in names.values()}
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for tiles, name in names.items():
                start = time.perf_counter()
                conv_packed(x, filters, bias, True, tiles)
                if round_:  # the first round is a warm-up
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_schedules(args: argparse.Namespace, generator) -> None:
    rows = [
        (name, time_schedules(cin, cout, size, args.batch, args.repeats, generator))
        for name, cin, cout, size in LAYERS
    ]
    columns = list(rows[0][1])
    print("layer   " + "".join(f"{column:>11}" for column in columns) + "  fastest")
    for name, seconds in rows:
        fastest = min(seconds, key=seconds.__getitem__)
        print(f"{name:<8}" + "".join(f"{seconds[c] * 1e3:>11.2f}" for c in columns) + f"  {fastest}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per layer and method (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the transforms use as many)")
    parser.add_argument("--schedules", action="store_true", help="time the tile schedules instead (ms)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}")
    if args.schedules:
        print_schedules(args, generator)
        return
    header = ("layer", "shape", "oneDNN ms", "Winograd ms", "speed-up", "err direct", "err Wino")
    print("{:<8} {:<18} {:>10} {:>12} {:>9} {:>11} {:>9}".format(*header))
    for name, cin, cout, size in LAYERS:
        direct, winograd, err_direct, err_winograd = time_layer(
            cin, cout, size, args.batch, args.repeats, generator
        )
        shape = f"{cin}->{cout} @ {size}"
        print(
            f"{name:<8} {shape:<18} {direct * 1e3:>10.1f} {winograd * 1e3:>12.1f} {direct / winograd:>8.2f}x "
            f"{err_direct:>11.1e} {err_winograd:>9.1e}"
        )


if __name__ == "__main__":
    main()
