"""Where a model's forward spends its time, layer by layer.

    .venv/bin/python benchmarks/profile_layers.py [--model ssd300_voc] [--batch 1] [--rounds 11]
                                                  [--threads 2] [--top 25] [--eager]

Runs ``model.optimize_for_inference(batch_size=--batch)`` (the default CPU path of Python
users, ``detect`` and ``eval``; ``--eager``: the model as built, channels-last) on a seeded
random batch, ``--rounds`` forwards after two untimed ones, and times every leaf module by
a pre-hook and a hook (wall clock, so a layer's time includes its OpenMP region's start and
end). Prints the median forward and, per layer, the median ms per image, largest first. The
layers whose time is an identity (`FusedReLU`, `FusedMaxPool2d`) show what was fused away.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import singleshot
from singleshot.runtime import tune_malloc


def profile(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> tuple[float, dict[str, float]]:
    """(median forward seconds, {leaf module name: median seconds}) over ``rounds`` forwards."""
    started: dict[str, float] = {}
    spent: dict[str, list[float]] = defaultdict(list)
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def before(_module, _args, name=name):
            started[name] = time.perf_counter()

        def after(_module, _args, _out, name=name):
            spent[name].append(time.perf_counter() - started[name])

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    forwards = []
    try:
        with torch.inference_mode():
            for index in range(rounds + 2):
                start = time.perf_counter()
                model(x)
                if index >= 2:
                    forwards.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    return statistics.median(forwards), {name: statistics.median(v[2:]) for name, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ssd300_voc", help="a preset (default ssd300_voc)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--rounds", type=int, default=11, help="timed forwards (median; default 11)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--top", type=int, default=25, help="layers to print (default 25)")
    parser.add_argument(
        "--eager", action="store_true", help="the model as built, not optimize_for_inference's copy"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    torch.manual_seed(0)
    model = singleshot.build_model(args.model).eval()
    size = model.image_size
    if args.eager:
        model = model.to(memory_format=torch.channels_last)
    else:
        model = model.optimize_for_inference(batch_size=args.batch)
        print(model.optimizations.describe())
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(args.batch, 3, size, size, generator=generator) * 50).contiguous(
        memory_format=torch.channels_last
    )
    forward, layers = profile(model, x, args.rounds)
    per_image = 1e3 / args.batch
    total = sum(layers.values()) * per_image
    print(
        f"{args.model}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}: forward "
        f"{forward * per_image:.1f} ms/image (median of {args.rounds}), its layers {total:.1f}"
    )
    for name, seconds in sorted(layers.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{name:<36} {seconds * per_image:>8.2f}")


if __name__ == "__main__":
    main()
