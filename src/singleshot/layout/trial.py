"""The timed trial: one step of the model in each layout on its own input shape, interleaved.

Each layout gets its own copy of the model (the caller's model is never run, changed or
trained) and the same seeded input. A step is a forward and, for training, a backward
of the squared outputs (the MultiBox loss costs the same in both layouts and is left
out); one untimed step per layout first (oneDNN builds its kernels on the first call),
then rounds of one timed step each, the order alternating between rounds (A B, B A, ...)
so that drift in the machine's load falls on both alike, until at least `MIN_ROUNDS`
rounds and `TRIAL_SECONDS` of timed steps are done (at most `MAX_ROUNDS`). Each layout's
time is its fastest step: load from other processes only ever adds time.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .decision import LAYOUTS, apply_memory_format, forced_layout

__all__ = [
    "MAX_ROUNDS",
    "MIN_ROUNDS",
    "TRIAL_SECONDS",
    "Timer",
    "device_and_dtype",
    "layout_steps",
    "measure_layouts",
    "time_step",
]

# A trial step holds the run's whole per-process batch (the caller's ``input_shape``). The
# layouts' relative speed changes with the batch, not only with the layers' shapes: on an AMD
# EPYC (Zen 4, AVX-512, 2 threads) an SSD300 training step of 2 images took the same time in
# both layouts (2.54 s against 2.51 s), while at the run's 8 images channels-last was 17%
# faster (8.6 s against 10.3 s).
# The trial then costs about three training steps per layout, once per machine and workload.
TRIAL_SECONDS = 1.5  # timed steps, both layouts together, once the minimum rounds are done
MIN_ROUNDS = 2
MAX_ROUNDS = 10

# timer(layout, step) -> seconds that one call of ``step`` took (``step`` runs the layout's
# model once and waits for the device); a fake timer may return numbers without calling it.
Timer = Callable[[str, Callable[[], None]], float]
Choice = TypeVar("Choice", bound=Hashable)  # what `measure_layouts` times: layouts, or other alternatives


def time_step(layout: object, step: Callable[[], object]) -> float:
    """The default timer: wall-clock seconds of one call of ``step``."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def layout_steps(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    training: bool,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Callable[[], None]]:
    """{layout: one trial step} for both `LAYOUTS`, each on its own copy of ``model`` in that
    layout (train/eval flags as ``model`` has them) and a seeded float input of
    ``input_shape`` (B, C, H, W) in the model's dtype and on its device."""
    device, dtype = device_and_dtype(model)
    generator = torch.Generator().manual_seed(0)
    # about the spread of mean-subtracted 0-255 pixels
    base = (torch.randn(tuple(input_shape), generator=generator) * 64).to(device=device, dtype=dtype)
    steps = {}
    for layout in LAYOUTS:
        decision = forced_layout(layout == LAYOUTS[0], "the trial")
        replica = apply_memory_format(copy.deepcopy(model), decision)
        x = base.contiguous(memory_format=decision.memory_format)
        make = _training_step if training else _inference_step
        steps[layout] = make(replica, x, autocast_dtype)
    return steps


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``model`` runs and in which float dtype (its first floating-point parameter's)."""
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _training_step(model: nn.Module, x: Tensor, autocast_dtype: torch.dtype | None) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with _autocast(x.device, autocast_dtype):
            outputs = model(x)
        loss = sum(t.float().square().mean() for t in _tensors(outputs))
        if not isinstance(loss, Tensor):
            raise ValueError(f"the model's forward returned no tensor to time a backward of: {outputs!r}")
        loss.backward()
        _synchronize(x.device)

    return step


def _inference_step(model: nn.Module, x: Tensor, autocast_dtype: torch.dtype | None) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), _autocast(x.device, autocast_dtype):
            model(x)
        _synchronize(x.device)

    return step


def _tensors(outputs: Any) -> Iterator[Tensor]:
    """The tensors in a forward's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(outputs, Tensor):
        yield outputs
    elif isinstance(outputs, (tuple, list)):
        for item in outputs:
            yield from _tensors(item)
    elif isinstance(outputs, dict):
        for item in outputs.values():
            yield from _tensors(item)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_layouts(
    steps: dict[Choice, Callable[[], Any]],
    timer: Callable[[Choice, Callable[[], Any]], float] = time_step,
    budget_s: float = TRIAL_SECONDS,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> dict[Choice, float]:
    """{layout: its fastest timed step in seconds}, timed as the module docstring says. The
    steps may be any alternatives keyed by any name (`singleshot.winograd.schedule` times its
    tile schedules with it)."""
    order = list(steps)
    for name in order:  # warm-up, not counted
        timer(name, steps[name])
    times: dict[Choice, list[float]] = {name: [] for name in order}
    spent = 0.0
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or spent < budget_s):
        for name in order if rounds % 2 == 0 else reversed(order):
            seconds = float(timer(name, steps[name]))
            times[name].append(seconds)
            spent += seconds
        rounds += 1
    return {name: min(values) for name, values in times.items()}
