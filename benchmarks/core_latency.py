"""How far apart two cores are: the round trip of one cache line between two pinned threads.

    .venv/bin/python benchmarks/core_latency.py [--seconds 30] [--cpus 0 1]

On a virtual machine the host decides where the virtual CPUs run. On the 2-core AMD EPYC
of benchmarks/README.md the round trip between them is either about 55 ns (neighbouring
cores) or about 360 ns (cores far apart: another core complex or socket), and the state
changes every few seconds to minutes. Each core alone runs as fast in both states, but
work split across the two pays the far trip for every hand-over and for every cache line
one thread writes and the other reads. Short operators suffer most: the demo model's int8
network gains 1.6x from its second thread in the near state and 1.07x in the far one,
while its float network, whose operators run three times longer, gains 1.9x and 1.6x.

So a two-thread timing says which state it was taken in: `round_trip_ns` before and after
(bench_int8.py does this for every row), and ``--seconds`` prints one figure a second.
The probe is a small C program (two threads pinned to ``--cpus``, passing a flag back and
forth 200,000 times), built once with the system's C compiler into a temporary folder.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

NEAR_BELOW_NS = 150.0  # between the two states seen (about 55 and 360 ns)

_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int flag;
static long trips;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int failed = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (failed) { fprintf(stderr, "cannot run on CPU %d: %s\n", cpu, strerror(failed)); exit(2); }
}

static void *answer(void *cpu) {
    pin(*(int *)cpu);
    for (long i = 0; i < trips; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {}
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s CPU CPU TRIPS\n", argv[0]); return 2; }
    int first = atoi(argv[1]), second = atoi(argv[2]);
    trips = atol(argv[3]);
    pin(first);
    pthread_t other;
    pthread_create(&other, NULL, answer, &second);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < trips; i++) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(other, NULL);
    printf("%.1f\n", ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / trips);
    return 0;
}
"""


@functools.cache
def _probe() -> Path:
    """Compile the probe once per process (C compiler from $CC, else cc), in a temporary
    folder removed at exit. RuntimeError if it does not compile."""
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"
    folder = Path(tempfile.mkdtemp(prefix="singleshot-core-latency-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "probe.c").write_text(_SOURCE)
    try:
        subprocess.run([compiler, "-O2", "-pthread", "-o", str(folder / "probe"), str(folder / "probe.c")],
                       check=True, capture_output=True, text=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        raise RuntimeError(f"cannot build the core-latency probe with {compiler}: {detail}") from None
    return folder / "probe"


def round_trip_ns(cpus: tuple[int, int] = (0, 1), trips: int = 200_000) -> float:
    """Mean nanoseconds for a flag to go from a thread on ``cpus[0]`` to one on ``cpus[1]`` and
    back. RuntimeError if the probe cannot be built or run (e.g. a CPU this process may not use)."""
    done = subprocess.run([str(_probe()), str(cpus[0]), str(cpus[1]), str(trips)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the core-latency probe failed on CPUs {cpus}: {done.stderr.strip()}")
    return float(done.stdout)


def try_round_trip_ns() -> float | None:
    """`round_trip_ns` between CPUs 0 and 1, or None where it cannot be measured (one CPU, no
    C compiler): the benchmarks record it beside their figures and go on without it."""
    try:
        return round_trip_ns()
    except RuntimeError:
        return None


def state(nanoseconds: float | None) -> str:
    """The state of a round trip of ``nanoseconds``: "near", "far" (see the module docstring)
    or "unknown" (None: not measured)."""
    if nanoseconds is None:
        return "unknown"
    return "near" if nanoseconds < NEAR_BELOW_NS else "far"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to watch (one figure a second)")
    parser.add_argument("--cpus", type=int, nargs=2, default=[0, 1], help="the two CPUs (default 0 1)")
    args = parser.parse_args()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        try:
            ns = round_trip_ns(tuple(args.cpus))
        except RuntimeError as error:
            parser.exit(1, f"core_latency.py: {error}\n")
        print(f"{time.strftime('%H:%M:%S')}  {ns:7.1f} ns  {state(ns)}", flush=True)
        time.sleep(max(0.0, 1.0 - ns * 200_000 / 1e9))


if __name__ == "__main__":
    main()
