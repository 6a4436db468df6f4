"""What ``singleshot benchmark`` prints and saves: the table, and the JSON with the machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "TIMING_ENVIRONMENT",
    "environment",
    "busy_machine_note",
    "spinning_threads_note",
    "format_benchmark_table",
]

# Settings in the environment that change what the runtimes compute or how their threads wait
# (e.g. OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads sleep rather than spin between
# parallel regions, which on a busy machine can change its figures severalfold).
TIMING_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict[str, Any]:
    """The machine and software the figures belong to: {"cpu" (its model name), "threads",
    "cpu_count", "load_average" (1, 5, 15 min; None where unknown), "python", "versions"
    {singleshot, torch, onnxruntime, openvino: None when not installed}, "environment" (those of
    `TIMING_ENVIRONMENT` that are set)}."""
    import torch

    from .. import __version__
    from ..cache import cpu_name

    return {
        "cpu": cpu_name(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {
            "singleshot": __version__,
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "openvino": _version("openvino"),
        },
        "environment": {name: os.environ[name] for name in TIMING_ENVIRONMENT if name in os.environ},
    }


def busy_machine_note(machine: Mapping[str, Any]) -> str | None:
    """A warning when `environment`'s ``machine`` was busy with other work and PyTorch's OpenMP
    threads spin-wait (several threads, ``OMP_WAIT_POLICY`` unset); None otherwise.

    A spinning thread that waits at the end of a parallel region for a thread another process
    preempted holds a core while it waits: on a 2-core machine at load average 4 this made the
    demo model's PyTorch batch-1 figures over 20 times slower (benchmarks/README.md).
    """
    load, cores = machine.get("load_average"), machine.get("cpu_count")
    if not load or not cores or load[0] <= cores or machine["threads"] < 2:
        return None
    if "OMP_WAIT_POLICY" in machine.get("environment", {}):
        return None
    return (
        f"the load average ({load[0]:.2f}) is above this machine's {cores} cores: other work competes "
        "with the runs, and PyTorch's OpenMP threads, which spin while they wait for each other, can "
        "run many times slower (pre-processing and the torch row). For figures of the code rather than "
        "of the load, use an idle machine, --threads 1, or OMP_WAIT_POLICY=PASSIVE"
    )


def spinning_threads_note(machine: Mapping[str, Any], formats: Sequence[str]) -> str | None:
    """A note when exported ``formats`` are timed in a process whose PyTorch OpenMP threads
    spin-wait (several threads, ``OMP_WAIT_POLICY`` unset); None otherwise.

    After the pre-processing (PyTorch's resize) its idle threads spin for a while on the
    cores that ONNX Runtime's or OpenVINO's threads then need: on 2 cores at batch 1 the demo
    model's int8 run took 1.40 ms after the resize against 0.98 ms with
    ``OMP_WAIT_POLICY=PASSIVE`` (benchmarks/README.md). That is what such a program gets,
    so the figures keep it, and the note says how to avoid it.
    """
    exported = [name for name in formats if name != "torch"]
    if not exported or machine["threads"] < 2 or "OMP_WAIT_POLICY" in machine.get("environment", {}):
        return None
    return (
        f"PyTorch's OpenMP threads spin-wait for a while after the pre-processing, on the cores that "
        f"the runtimes of {', '.join(exported)} then need, and their network figures include that, "
        "most at small batches. A program that runs only exported models can set "
        "OMP_WAIT_POLICY=PASSIVE before importing torch (PyTorch's own runs get slower); running "
        "this command with it shows those figures"
    )


def format_benchmark_table(
    rows: Sequence[Mapping[str, Any]], maps: Mapping[str, float] | None = None, metric: str = "voc07"
) -> str:
    """The rows of `singleshot.benchmark.time_formats` as a text table: ms per image by stage
    and in all, images/s and, with ``maps`` ({format: mAP 0-1}), mAP in points.

    A network figure that includes decoding and NMS (a graph with them inside) is marked
    with ``*``, and a line below says so.
    """
    header = f"{'format':10s} {'batch':>5s} {'pre ms':>8s} {'network ms':>11s} {'post ms':>8s} "
    header += f"{'total ms':>9s} {'images/s':>9s}"
    if maps is not None:
        header += f" {'mAP (' + metric + ')':>13s}"
    lines = [header]
    for row in rows:
        network = f"{row['network_ms']:.2f}" + ("*" if row["network_includes_postprocess"] else " ")
        line = (
            f"{row['format']:10s} {row['batch']:5d} {row['preprocess_ms']:8.2f} {network:>11s} "
            f"{row['postprocess_ms']:8.2f} {row['ms_per_image']:9.2f} {row['images_per_s']:9.1f}"
        )
        if maps is not None:
            line += f" {100 * maps[row['format']]:13.2f}" if row["format"] in maps else f" {'-':>13s}"
        lines.append(line)
    if any(row["network_includes_postprocess"] for row in rows):
        lines.append(
            "* decoding and NMS run inside the exported graph, so they are in the network figure; "
            "post is only turning its outputs into pixel boxes"
        )
    return "\n".join(lines)
