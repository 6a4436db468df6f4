"""What int8 costs and gains: mAP and speed of a float and an int8 export on the same data.

`int8_report` scores both files on a dataset as ``singleshot eval`` does
(`singleshot.evaluation.evaluate_model`) and times both with ONNX Runtime (`time_onnx_files`: the same
session settings, the files taking turns, the median per image). `format_int8_report` prints it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..timing import Laps, time_in_turns
from ..transforms import preprocess
from .runtime import OnnxDetector, session_options

__all__ = ["time_onnx_files", "Timing", "onnx_session", "int8_report", "format_int8_report"]


def onnx_session(path: str | os.PathLike, threads: int | None) -> Any:
    """An ONNX Runtime CPU session for timing: `session_options` with ``threads`` intra-op
    threads (None = one per physical core), worker threads spinning within a run as
    `OnnxDetector` runs them (ONNX Runtime's default) and stopping when it returns."""
    import onnxruntime as ort

    options = session_options(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Timing(NamedTuple):
    """Median milliseconds per image of one file: ``wall`` (elapsed) and ``cpu`` (CPU time of
    this process's threads: what the run computed, whatever else the machine ran meanwhile,
    and what its idle worker threads spent spin-waiting)."""

    wall: float
    cpu: float


def time_onnx_files(
    paths: Sequence[str | os.PathLike],
    inputs: Sequence[np.ndarray],
    threads: int | None = None,
    repeats: int = 5,
) -> list[Timing]:
    """Median milliseconds per image of each file, the files taking turns.

    Every round gives every file a turn (the order reversed every other round) in which it
    runs all inputs in a row after a pause and 50 ms of untimed runs (`singleshot.timing.time_in_turns`),
    so each is timed warm and all see the same machine load; the median over ``repeats``
    rounds x inputs of each run's time / batch size is reported, as elapsed time and as CPU
    time. On a machine other processes keep busy, a longer run is more often preempted,
    which inflates elapsed-time ratios.

    Args:
        paths: ONNX files with one input, float32 (B, 3, S, S).
        inputs: batches to run, float32 (B, 3, S, S).
        threads: intra-op threads of every session (None = one per core).
        repeats: rounds over ``inputs``.
    """
    sessions = [onnx_session(path, threads) for path in paths]
    times = time_in_turns([_session_run(session) for session in sessions], inputs, repeats)
    return [Timing(t.median("run"), t.median("run", cpu=True)) for t in times]


def _session_run(session: Any) -> Callable[[np.ndarray, Laps], None]:
    """``run(x, laps)`` for `singleshot.timing.time_in_turns`: one ONNX Runtime run, one stage."""
    name = session.get_inputs()[0].name

    def run(x: np.ndarray, laps: Laps) -> None:
        session.run(None, {name: x})
        laps.lap("run")

    return run


def int8_report(
    float_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    dataset: Any,
    metric: str = "voc07",
    threads: int | None = None,
    timing_images: int = 8,
    repeats: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP and speed of a float export and its int8 twin on ``dataset``.

    Args:
        float_path, int8_path: ONNX files of the same model (`export_onnx`, `quantize_onnx`).
        dataset: as for `singleshot.evaluation.evaluate_model`; every image is scored.
        metric: "voc07" (VOC data), "voc12" or "coco".
        threads: ONNX Runtime intra-op threads for both (None = one per core).
        timing_images: the dataset's first images timed one at a time (batch 1).
        repeats: timing rounds (see `time_onnx_files`).

    Returns:
        {"metric", "num_images", "float": {"file", "map", "ms_per_image", "cpu_ms_per_image"},
        "int8": {...}, "map_change_points": (int8 - float) x 100, "speedup": float ms / int8 ms
        (elapsed), "cpu_speedup" (CPU time), "timing": {how it was timed: threads, batch,
        rounds, images, runtime, CPU, load average}, "int8_settings": the int8 file's metadata}.
    """
    import onnxruntime as ort

    from ..cache import cpu_name
    from ..evaluation.run import evaluate_model

    detectors = {"float": OnnxDetector(float_path, threads), "int8": OnnxDetector(int8_path, threads)}
    scores = {k: evaluate_model(d, dataset, metric, progress=progress) for k, d in detectors.items()}
    reference = detectors["float"]
    count = min(timing_images, len(dataset))
    inputs = [
        preprocess(
            [dataset[i][0]], reference.image_size, reference.image_mean, std=reference.image_std
        ).numpy()
        for i in range(count)
    ]
    float_time, int8_time = time_onnx_files([float_path, int8_path], inputs, threads, repeats)
    return {
        "metric": metric,
        "num_images": scores["float"]["num_images"],
        "float": _entry(float_path, scores["float"]["map"], float_time),
        "int8": _entry(int8_path, scores["int8"]["map"], int8_time),
        "map_change_points": 100.0 * (scores["int8"]["map"] - scores["float"]["map"]),
        "speedup": float_time.wall / int8_time.wall,
        "cpu_speedup": float_time.cpu / int8_time.cpu,
        "timing": {
            "runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider",
            "threads": threads or os.cpu_count(),
            "batch": 1,
            "images": count,
            "rounds": repeats,
            "statistic": "median over rounds x images, float and int8 taking turns",
            "cpu": cpu_name(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "int8_settings": detectors["int8"].metadata.get("int8"),
    }


def _entry(path: str | os.PathLike, map_: float, timing: Timing) -> dict[str, Any]:
    return {"file": str(path), "map": map_, "ms_per_image": timing.wall, "cpu_ms_per_image": timing.cpu}


def format_int8_report(report: dict[str, Any]) -> str:
    """The report as a small table: mAP in points, ms per image elapsed and in CPU time."""
    metric, timing = report["metric"], report["timing"]
    rows = [f"{'':8s} {'mAP (' + metric + ')':>14s} {'ms/image':>10s} {'CPU ms/image':>13s}"]
    for name in ("float", "int8"):
        entry = report[name]
        times = f"{entry['ms_per_image']:10.2f} {entry['cpu_ms_per_image']:13.2f}"
        rows.append(f"{name:8s} {100 * entry['map']:14.2f} {times}")
    rows.append(
        f"int8 changes mAP by {report['map_change_points']:+.2f} points on {report['num_images']} images "
        f"and runs {report['speedup']:.2f}x as fast ({report['cpu_speedup']:.2f}x in CPU time, idle threads' "
        "spin-waiting included); ONNX "
        f"Runtime, {timing['threads']} threads, batch 1, median of {timing['rounds']} rounds in turns "
        f"over {timing['images']} images; {timing['cpu']}"
    )
    return "\n".join(rows)
