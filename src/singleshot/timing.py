"""Timing several ways of doing the same work fairly on a machine that other work shares.

Two schedules run every candidate on the same inputs, round after round, the candidates'
order reversed every other round, so a change in the machine's load falls on all alike:

- `time_interleaved`: each input through every candidate in turn (candidates alternate
  run by run);
- `time_in_turns`: each candidate runs all the inputs in a row, after a pause and a
  warm-up of untimed runs: timed warm, as a deployment that runs one model runs it.
  Runtimes whose idle worker threads spin-wait (ONNX Runtime's and PyTorch's OpenMP
  threads, by default) need this: run by run, one candidate's spinning threads take the
  cores from the next.

A candidate marks the end of each of its stages on a `Laps` (``laps.lap("network")``);
every stage's time is recorded per item of the input (``len(input)``: images in a batch),
elapsed and as CPU time.

>>> times = time_in_turns([run_a, run_b], batches, repeats=5)
>>> times[0].median("network"), times[0].spread("network")

`time_in_turns` is what `singleshot.export.compare.time_onnx_files` (int8 against float)
and `singleshot.benchmark` (``singleshot benchmark``) use.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Laps", "StageTimes", "time_in_turns", "time_interleaved"]

InputT = TypeVar("InputT", bound=Sized)


class Laps:
    """The stages of one run: ``lap(name)`` ends the stage that began at the previous lap (or
    when the `Laps` was made) and records its elapsed and CPU seconds under ``name``.

    CPU time is this process's (`time.process_time`: all its threads), so it counts what a
    run computed and not the time it spent preempted by other processes.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[stage] = self.wall.get(stage, 0.0) + wall - self._wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self._cpu
        self._wall, self._cpu = wall, cpu


@dataclass
class StageTimes:
    """One candidate's samples: per stage, milliseconds per item of each timed run.

    Attributes:
        wall: {stage: [elapsed ms per item, one per run]}, stages in the order first lapped.
        cpu: {stage: [CPU ms per item, one per run]}.
    """

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, laps: Laps, items: int) -> None:
        """Record one run of ``items`` items (its stage times divided by ``items``)."""
        for stage, seconds in laps.wall.items():
            self.wall.setdefault(stage, []).append(1000.0 * seconds / items)
        for stage, seconds in laps.cpu.items():
            self.cpu.setdefault(stage, []).append(1000.0 * seconds / items)

    @property
    def stages(self) -> list[str]:
        return list(self.wall)

    def median(self, stage: str, cpu: bool = False) -> float:
        """Median ms per item of ``stage`` (elapsed, or CPU time with ``cpu``)."""
        return statistics.median((self.cpu if cpu else self.wall)[stage])

    def spread(self, stage: str, cpu: bool = False) -> dict[str, float]:
        """{"min", "q1", "median", "q3", "max"} ms per item of ``stage`` over the runs
        (quartiles by `statistics.quantiles`, inclusive method; one run: all equal)."""
        samples = sorted((self.cpu if cpu else self.wall)[stage])
        if len(samples) == 1:
            return dict.fromkeys(("min", "q1", "median", "q3", "max"), samples[0])
        q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return {"min": samples[0], "q1": q1, "median": q2, "q3": q3, "max": samples[-1]}


def _warmed(runs: Sequence[Callable[[InputT, Laps], Any]], inputs: Sequence[InputT], repeats: int,
            warmup: int) -> list[StageTimes]:  # fmt: skip
    """Check the arguments, run each run ``warmup`` times untimed; an empty record per run."""
    if repeats < 1 or not inputs:
        raise ValueError("timing needs at least one input and one round")
    for _ in range(warmup):
        for run in runs:
            run(inputs[0], Laps())
    return [StageTimes() for _ in runs]


def _round_order(count: int, round_index: int) -> list[int]:
    """The runs' order in a round: as given, reversed every other round."""
    return list(range(count))[:: -1 if round_index % 2 else 1]


def _warm_up(run: Callable[[InputT, Laps], Any], x: InputT, seconds: float) -> None:
    """Run ``run`` on ``x``, untimed, until ``seconds`` have passed (at least once)."""
    end = time.perf_counter() + seconds
    run(x, Laps())
    while time.perf_counter() < end:
        run(x, Laps())


def _timed(run: Callable[[InputT, Laps], Any], x: InputT, times: StageTimes) -> None:
    laps = Laps()
    run(x, laps)
    times.add(laps, len(x))


def time_interleaved(
    runs: Sequence[Callable[[InputT, Laps], Any]],
    inputs: Sequence[InputT],
    repeats: int,
    warmup: int = 1,
    after_round: Callable[[], Any] | None = None,
) -> list[StageTimes]:
    """Time every run on every input, interleaved; one `StageTimes` per run, in order.

    Args:
        runs: ``run(input, laps)`` does the work on ``input`` and calls ``laps.lap(stage)``
            at the end of each of its stages.
        inputs: the work's inputs (e.g. batches); each run's times are divided by ``len(input)``.
        repeats: rounds; each round runs every input through every run (the runs' order
            reversed every other round), so each run gets ``repeats * len(inputs)`` samples.
        warmup: untimed runs of each on ``inputs[0]`` first (allocations, first-run set-up).
        after_round: called after each round (e.g. to advance a progress bar).

    Raises:
        ValueError: no input, or ``repeats`` < 1.
    """
    times = _warmed(runs, inputs, repeats, warmup)
    for round_index in range(repeats):
        order = _round_order(len(runs), round_index)
        for x in inputs:
            for k in order:
                _timed(runs[k], x, times[k])
        if after_round is not None:
            after_round()
    return times


def time_in_turns(
    runs: Sequence[Callable[[InputT, Laps], Any]],
    inputs: Sequence[InputT],
    repeats: int,
    warmup: int = 1,
    after_round: Callable[[], Any] | None = None,
    pause: float = 0.05,
    warm: float = 0.05,
) -> list[StageTimes]:
    """Time every run on every input, one run's turn at a time; one `StageTimes` per run.

    Each round gives every run a turn (the runs' order reversed every other round): a pause
    of ``pause`` seconds (the previous run's spinning worker threads go to sleep), untimed
    runs on ``inputs[0]`` for ``warm`` seconds, at least one (this run's threads wake up and
    the cores, idle during the pause, come back to speed), then all ``inputs`` in a row,
    timed. Arguments and errors as `time_interleaved`'s; each run gets ``repeats *
    len(inputs)`` samples.

    The warm-up is a duration, not a count of runs: on the 2-core virtual machine of
    benchmarks/README.md a 0.7 ms run took twice as long right after a 50 ms pause and
    11-33% longer in the nine runs after it, which a single untimed run left in the figures
    of short runs, and not of long ones.
    """
    times = _warmed(runs, inputs, repeats, warmup)
    for round_index in range(repeats):
        for k in _round_order(len(runs), round_index):
            time.sleep(pause)
            _warm_up(runs[k], inputs[0], warm)
            for x in inputs:
                _timed(runs[k], x, times[k])
        if after_round is not None:
            after_round()
    return times
