"""How each Winograd convolution schedules its tiles on this machine, chosen by timing.

The OpenMP kernels run a convolution either in per-thread blocks of n tiles, each thread
taking its blocks through the three steps in its own core's cache, or in chunks the threads
share (`singleshot.winograd.ops`). Which is faster depends on the layer (channels, map size,
batch) and on the CPU's caches: on an AMD EPYC (Zen 4, 1 MB L2 per core) blocks of 6 ran
SSD300's conv1_2 ... conv3_3 fastest, while on an Intel Xeon (2 MB L2 per core) shared
chunks ran conv3_2 1.4-1.6x and blocks of 48 conv2_2 1.3-1.4x as fast as blocks of 6 at
batch 1 (benchmarks/README.md). Every schedule sums each output in the same order, so the
choice changes the speed only, never a bit of the result: `tune_winograd` times the
`CANDIDATES` on each layer's own input, as cuDNN's benchmark mode picks its algorithms, and
keeps the fastest, cached per machine (``winograd-schedule-*.json`` in the singleshot cache).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..cache import cache_dir, cached_files, cpu_identity, keyed_path, read_keyed, remove_cached, write_keyed
from ..layout.trial import measure_layouts, time_step
from .build import kernels_use_openmp
from .cache import SOURCE
from .conv import conv_packed, panel_width
from .module import WinogradConv2d
from .ops import NO_POOL, SHARED_CHUNKS

__all__ = [
    "CANDIDATES",
    "PATTERN",
    "ROUNDS",
    "ScheduleTimer",
    "clear_schedules",
    "list_schedules",
    "schedule_key",
    "tune_winograd",
]

# Shared chunks, then blocks of 6 (one register block of the products) to 48 tiles.
CANDIDATES: tuple[int, ...] = (SHARED_CHUNKS, 6, 12, 24, 48)
ROUNDS = 3  # timed calls per candidate, after one untimed; its fastest counts
PATTERN = "winograd-schedule-*.json"  # the cached choices, in the singleshot cache

# timer(block_tiles, call) -> the seconds one run of ``call`` took (a fake may not call it)
ScheduleTimer = Callable[[int, Callable[[], object]], float]


def schedule_key(x_shape: Sequence[int], out_channels: int, pool: int = NO_POOL) -> dict[str, object]:
    """What the fastest schedule depends on, as plain JSON data: the CPU (model and flags), the
    kernels (their source, the instruction set PyTorch's ``ATEN_CPU_CAPABILITY`` lets them
    use, their panel width), the thread count, and the layer's input shape (B, C, H, W),
    output channels and pooling (`singleshot.winograd.ops.NO_POOL`)."""
    return {
        "version": 2,
        "cpu": hashlib.sha256(cpu_identity().encode()).hexdigest()[:16],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16],
        "panel": panel_width(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "input": [int(n) for n in x_shape],
        "out_channels": int(out_channels),
        "pool": int(pool),
        "candidates": list(CANDIDATES),
    }


def tune_winograd(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    use_cache: bool = True,
    timer: ScheduleTimer | None = None,
) -> dict[str, int]:
    """Give each `WinogradConv2d` of ``model`` the fastest schedule on the input it gets when
    ``model`` runs on ``input_shape`` (B, C, H, W), for batches of B (its ``schedules[B]``);
    returns {module name: block_tiles}.

    One forward pass of a seeded input runs; before each Winograd convolution, its
    `CANDIDATES` are timed on the input it receives, in turns (`ROUNDS` rounds after an
    untimed one, the order reversed every other round), and the fastest run of each counts.
    A choice cached for the same key (`schedule_key`) is read instead of timed; before the
    first timing, one line on stderr says so. Nothing happens without OpenMP kernels (they
    have one schedule) or Winograd convolutions.

    Args:
        model: a model holding `WinogradConv2d` modules (e.g. from `use_winograd`), in its
            inference layout and on the CPU; only their ``schedules`` change.
        input_shape: the batch the model will run, (B, C, H, W) as its forward takes it.
        use_cache: read and write the cached choices; False times every layer.
        timer: ``timer(block_tiles, call) -> seconds`` (default: the wall-clock time of the
            call, `singleshot.layout.trial.time_step`).
    """
    names = {module: name for name, module in model.named_modules() if isinstance(module, WinogradConv2d)}
    if not names or not kernels_use_openmp():
        return {}
    chosen: dict[str, int] = {}
    measured: list[str] = []  # the layers timed, not read from the cache

    def before(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        assert isinstance(module, WinogradConv2d)
        x = args[0].float()
        key = schedule_key(x.shape, module.out_channels, module.pool)
        path = keyed_path("winograd-schedule", key)
        tiles = _cached(path, key) if use_cache else None
        if tiles is None:
            if not measured:
                print(f"singleshot: timing the Winograd tile schedules once for this CPU at {x.shape[0]} "
                      f"image(s) per batch (cached in {cache_dir()})", file=sys.stderr)  # fmt: skip
            measured.append(names[module])
            tiles = _fastest(module, x, timer or time_step, path if use_cache else None, key)
        module.schedules[int(x.shape[0])] = chosen[names[module]] = tiles

    handles = [module.register_forward_pre_hook(before) for module in names]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=generator) * 64  # about mean-subtracted pixels
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return chosen


def _cached(path: Path, key: dict[str, object]) -> int | None:
    """The schedule cached at ``path`` for ``key``, or None."""
    record = read_keyed(path, key, "schedule", "Winograd schedule")
    tiles = None if record is None else record.get("block_tiles")
    return tiles if type(tiles) is int and tiles in CANDIDATES else None  # not a bool


def _fastest(
    module: WinogradConv2d, x: Tensor, timer: ScheduleTimer, path: Path | None, key: dict[str, object]
) -> int:
    """The fastest of `CANDIDATES` for ``module`` on ``x``, timed; cached at ``path`` if given."""
    seconds = _time_candidates(module, x, timer)
    best = min(CANDIDATES, key=lambda tiles: seconds[tiles])  # the first of equals
    if path is not None:
        record = {"block_tiles": best, "seconds": {str(tiles): seconds[tiles] for tiles in CANDIDATES}}
        write_keyed(path, key, "schedule", "Winograd schedule", record)
    return best


def _time_candidates(module: WinogradConv2d, x: Tensor, timer: ScheduleTimer) -> dict[int, float]:
    """{block_tiles: its fastest of `ROUNDS` timed runs on ``x``}: the candidates in turns, after
    an untimed round, as the layout trial times its layouts (`singleshot.layout.trial`)."""
    x = x.contiguous(memory_format=torch.channels_last)

    def call(tiles: int) -> Callable[[], Tensor]:
        return lambda: conv_packed(x, module.u, module.bias, module.relu, tiles, module.pool)

    return measure_layouts({tiles: call(tiles) for tiles in CANDIDATES}, timer, 0.0, ROUNDS, ROUNDS)


def list_schedules() -> list[Path]:
    """The cached schedule choices, sorted by name (every machine and layer shape seen)."""
    return cached_files(PATTERN)


def clear_schedules() -> list[Path]:
    """Delete the cached schedule choices (nothing else in the cache); returns what was deleted."""
    return remove_cached(PATTERN)
