"""Where an exported file's time goes, node by node, with the cores near and far.

    .venv/bin/python benchmarks/profile_onnx.py FILE [FILE ...] [--data runs/demo/data]
        [--threads 2] [--batch 1] [--runs 100] [--seconds 240]

Until ``--seconds`` have passed, each file in turn: the round trip between cores 0 and 1
(`core_latency.py`), a fresh ONNX Runtime session with its profiler on (the threads and
options `OnnxDetector` deploys with) running ``--runs`` times on the same batch of the
data's test images (preprocessed as the file's metadata says), then the round trip again.
A sample whose two round trips disagree on the state is dropped. Per file and state it
prints the median run, then per node the median over samples of the node's median kernel
time (the first 30% of each sample's runs left out as warm-up), and the difference far
minus near: the nodes that pay for the far state.

The profiler adds a few microseconds to every node, so these runs are slower than
`bench_int8.py`'s; compare states and files with each other, not with its figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import onnxruntime as ort

from singleshot.data import open_dataset
from singleshot.export import OnnxDetector
from singleshot.export.runtime import session_options
from singleshot.transforms import preprocess

sys.path.insert(0, str(Path(__file__).parent))
from core_latency import state, try_round_trip_ns  # noqa: E402

STATES = ("near", "far")


def file_input(path: str, data: str, batch: int) -> np.ndarray:
    """The first ``batch`` test images of ``data``, as the file at ``path`` takes them."""
    detector = OnnxDetector(path, threads=1)
    test = open_dataset(data, split="test")
    images = [test[i % len(test)][0] for i in range(batch)]
    return preprocess(images, detector.image_size, detector.image_mean, std=detector.image_std).numpy()


def profile_once(path: str, x: np.ndarray, threads: int, runs: int, folder: str) -> tuple[float, dict]:
    """One profiled session: (median run in µs, {node: (operator, median kernel µs)})."""
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    skip = int(0.3 * runs)
    run_times = [e["dur"] for e in events if e.get("name") == "model_run"][skip:]
    kernels: dict[str, list[float]] = collections.defaultdict(list)
    operators = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name.removesuffix("_kernel_time")
            kernels[node].append(event["dur"])
            operators[node] = event["args"].get("op_name", "?")
    nodes = {node: (operators[node], median(times[skip:] or times)) for node, times in kernels.items()}
    return median(run_times), nodes


def report(path: str, samples: dict[str, list[tuple[float, dict]]]) -> None:
    """Print one file's medians per state and node (see the module docstring)."""
    counts = ", ".join(f"{len(samples[s])} {s}" for s in STATES)
    runs = {s: median(r for r, _ in samples[s]) if samples[s] else float("nan") for s in STATES}
    print(f"\n{path}: {counts} samples; run {runs['near']:.0f} µs near, {runs['far']:.0f} µs far")
    order = next((list(n) for s in STATES for _, n in samples[s][:1]), [])
    print(f"{'near µs':>8} {'far µs':>8} {'far-near':>8}  operator          node")
    for node in order:
        per_state = {s: [n[node][1] for _, n in samples[s] if node in n] for s in STATES}
        near, far = (median(per_state[s]) if per_state[s] else float("nan") for s in STATES)
        operator = next(n[node][0] for s in STATES for _, n in samples[s] if node in n)
        print(f"{near:8.1f} {far:8.1f} {far - near:+8.1f}  {operator:16s}  {node[:48]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", help="ONNX files written by singleshot export")
    parser.add_argument("--data", default="runs/demo/data", help="a dataset whose test images feed the files")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    parser.add_argument("--runs", type=int, default=100, help="runs per profiled session (default 100)")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to sample (default 240)")
    args = parser.parse_args()
    inputs = {path: file_input(path, args.data, args.batch) for path in args.files}
    samples = {path: {s: [] for s in STATES} for path in args.files}
    end = time.monotonic() + args.seconds
    with tempfile.TemporaryDirectory(prefix="singleshot-profile-") as folder:
        while time.monotonic() < end:
            for path in args.files:
                before = state(try_round_trip_ns())
                sample = profile_once(path, inputs[path], args.threads, args.runs, folder)
                if before in STATES and state(try_round_trip_ns()) == before:
                    samples[path][before].append(sample)
    for path in args.files:
        report(path, samples[path])


if __name__ == "__main__":
    main()
