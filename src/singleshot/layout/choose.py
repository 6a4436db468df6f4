"""`choose_memory_format`: the faster layout for a model on this machine, by a cached timed trial."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn

from . import trial
from .decision import LAYOUTS, LayoutDecision
from .store import cached_decision, decision_key, device_name, store_decision

__all__ = ["BUSY_CPU_SHARE", "choose_memory_format", "busy_trial"]

# A CPU trial whose process got less than this share of the time its threads could have run
# (CPU seconds / (elapsed seconds x threads)) ran on a machine other work kept busy; its
# timings say more about that load than about the layouts, so it is not cached. Unloaded,
# PyTorch's threads compute or spin-wait through a trial step (a share near 1); one other
# busy process per core brings two threads on two cores to about 0.5.
BUSY_CPU_SHARE = 0.5
_JUDGED_SECONDS = 0.2  # shorter trials (fake timers in tests) are not judged


def busy_trial(elapsed: float, cpu: float, threads: int) -> str | None:
    """Why a CPU trial of ``elapsed`` seconds, in which this process used ``cpu`` seconds on
    ``threads`` threads, must not be cached (its share below `BUSY_CPU_SHARE`); None if it may."""
    if elapsed < _JUDGED_SECONDS or threads < 1:
        return None
    share = cpu / (elapsed * threads)
    if share >= BUSY_CPU_SHARE:
        return None
    return (f"not cached: other work kept the machine busy during the trial (this process ran "
            f"{share:.0%} of the time its {threads} threads could have)")  # fmt: skip


def choose_memory_format(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    training: bool,
    autocast_dtype: torch.dtype | None = None,
    use_cache: bool = True,
    timer: trial.Timer | None = None,
) -> LayoutDecision:
    """Time ``model`` in both memory formats on ``input_shape`` and return the faster one.

    The way cuDNN's benchmark mode picks convolution algorithms: a short trial on the
    model's own shapes (`singleshot.layout.trial`: forward + backward with
    ``training=True``, forward only without), with the thread count and device as they
    are now. The result is cached per machine and workload (`singleshot.layout.store`): a
    later call with the same key reads it (source "cached") and runs nothing. A CPU trial
    during which other work kept the machine busy (`busy_trial`) is not cached, so that a
    later run on a quieter machine measures again; its decision says why (``reason``).

    Args:
        model: the model as it will run: on its device, in its dtype, its train/eval flags
            set (BatchNorm frozen or not). It is copied for the trial, never changed.
        input_shape: (B, C, H, W) of one trial step: the run's own batch (the layouts' gap
            changes with B, see `singleshot.layout.trial`).
        training: time forward + backward (a training step) or the forward alone.
        autocast_dtype: the autocast dtype the run uses (None: none).
        use_cache: read and write the cache; False measures every time and writes nothing.
        timer: ``timer(layout, step) -> seconds`` (default `singleshot.layout.trial.time_step`).

    Returns:
        A `LayoutDecision` (source "measured" or "cached") with both layouts' times per step;
        the trial leaves the RNG states, threads and ``model`` as they were.
    """
    device, dtype = trial.device_and_dtype(model)
    key = decision_key(model, input_shape, training=training, dtype=dtype, device=device,
                       autocast_dtype=autocast_dtype)  # fmt: skip
    if use_cache:
        cached = cached_decision(key)
        if cached is not None:
            return cached
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # in case the model draws random numbers
        steps = trial.layout_steps(model, input_shape, training=training, autocast_dtype=autocast_dtype)
        start, start_cpu = time.perf_counter(), time.process_time()
        seconds = trial.measure_layouts(steps, timer if timer is not None else trial.time_step)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    del steps
    busy = busy_trial(elapsed, cpu, torch.get_num_threads()) if device.type == "cpu" else None
    decision = LayoutDecision(
        channels_last=seconds[LAYOUTS[0]] <= seconds[LAYOUTS[1]],
        source="measured",
        seconds=seconds,
        trial_batch=int(input_shape[0]),
        measured_on=f"{device_name(device)}, {torch.get_num_threads()} threads",
        mode="train" if training else "inference",
        reason=busy,
    )
    if use_cache and busy is None:
        path = store_decision(key, decision)
        if path is not None:
            decision = dataclasses.replace(decision, cache_file=str(path))
    return decision
