"""Int8 against float, both in ONNX Runtime: mAP and speed in the same run.

    .venv/bin/python benchmarks/bench_int8.py [--checkpoint runs/demo/best.pt] [--data runs/demo/data]
        [--models demo ssd300 ssdlite320] [--threads 1 2] [--batch 1 8] [--rounds 10]
        [--calibration-images 100] [--out bench-int8]
        [--ssdlite-checkpoint CKPT --ssdlite-data DIR]

- demo: the trained demo model (``make demo``: ssd160_compact on the synthetic shapes).
  Float and int8 files with post-processing (decoding and NMS inside the graph, as
  ``singleshot export --with-postprocess`` writes them); int8 calibrated on the data's
  ``train`` images with each choice of layers kept in float (none, the first convolution,
  the heads, both); VOC07 mAP of every file on all ``test`` images.
- ssdlite320 with ``--ssdlite-checkpoint CKPT --ssdlite-data DIR`` (e.g. a checkpoint of
  ``singleshot demo --model ssdlite320_voc`` and its data): the same as demo for that
  trained model, mAP on its data's ``test`` images, calibrated on its ``train`` images.
- ssd300 / ssdlite320 otherwise: the benchmarks' SSD300 and SSDLite320
  (``peers.build_models`` and ``peers.build_ssdlite_models``: random weights shaped like a
  trained model's outputs), so speed only, plus how far the int8 network's loc and conf
  move from float (relative error over the test images). Calibrated on the demo's train
  images, resized to 300 / 320.

Speed: for each thread count and batch size, every file of a model runs on the same
inputs, the files taking turns (`singleshot.export.compare.time_onnx_files`: each round
gives every file a turn, the order reversed every other round, in which it runs all inputs
in a row after a pause and 50 ms of untimed runs, ONNX Runtime's idle worker threads
spinning as deployed); the median ms per image over rounds x inputs, and float's time
divided by each file's (> 1 = faster than float). Every row also gives the round trip
between cores 0 and 1 before and after it (`core_latency.py`: "near" or "far"; on a
virtual machine two threads gain less when the host runs its CPUs far apart). "network"
rows time the network alone (loc, conf), without decoding and NMS. ``--spin-check`` also
times the trained models' float and default int8 files through `OnnxDetector`, the
threads spinning between runs and sleeping.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from singleshot.cache import cpu_name
from singleshot.checkpoint import load
from singleshot.data import open_dataset
from singleshot.evaluation import evaluate_model
from singleshot.export import OnnxDetector, export_onnx
from singleshot.export.calibration import calibration_images
from singleshot.export.compare import time_onnx_files
from singleshot.export.int8 import quantize_onnx
from singleshot.timing import Laps, time_in_turns
from singleshot.transforms import preprocess

sys.path.insert(0, str(Path(__file__).parent))
from core_latency import state, try_round_trip_ns  # noqa: E402

LAYER_CHOICES = {"none": (), "first": ("first",), "heads": ("heads",), "first+heads": ("first", "heads")}


def timing_inputs(images: list[torch.Tensor], model: Any, batch: int, count: int) -> list[np.ndarray]:
    """``count`` batches of ``batch`` images (cycling through ``images``), as the model's input."""
    std = getattr(model, "image_std", None)
    batches = []
    for k in range(count):
        chosen = [images[(k * batch + i) % len(images)] for i in range(batch)]
        batches.append(preprocess(chosen, model.image_size, model.image_mean, std=std).numpy())
    return batches


def time_files(
    files: dict[str, Path], images: list[torch.Tensor], model: Any, args: argparse.Namespace
) -> list:
    """Rows {threads, batch, name: ms per image, core_round_trip_ns: [before, after]} for every
    thread count and batch size (the round trip between cores 0 and 1, `core_latency`)."""
    rows = []
    for threads in args.threads:
        for batch in args.batch:
            inputs = timing_inputs(images, model, batch, max(1, args.inputs // batch))
            before = try_round_trip_ns()
            times = time_onnx_files(list(files.values()), inputs, threads, args.rounds)
            trips = [before, try_round_trip_ns()]
            rows.append({"threads": threads, "batch": batch, **{n: t._asdict() for n, t in zip(files, times)},
                         "core_round_trip_ns": trips})  # fmt: skip
            cells = [f"{name} {t.wall:.2f} ({times[0].wall / t.wall:.2f}x) | {t.cpu:.2f} "
                     f"({times[0].cpu / t.cpu:.2f}x)" for name, t in zip(files, times)]  # fmt: skip
            cores = "/".join("not measured" if ns is None else f"{ns:.0f} ns {state(ns)}" for ns in trips)
            print(f"  {threads} threads, batch {batch}, cores {cores}, ms/image elapsed | CPU: "
                  + ", ".join(cells))  # fmt: skip
    return rows


def _detector_run(runner: OnnxDetector) -> Any:
    """``run(x, laps)`` for `singleshot.timing.time_in_turns`: one `OnnxDetector.run`, one stage."""

    def run(x: torch.Tensor, laps: Laps) -> None:
        runner.run(x)
        laps.lap("run")

    return run


def spin_check(
    files: dict[str, Path], images: list[torch.Tensor], model: Any, args: argparse.Namespace
) -> list:
    """Rows {threads, batch, "<file> spin on|off": ms per image}: each file with ONNX Runtime's
    idle worker threads spinning (`OnnxDetector`'s default, what a deployment runs, and how
    `time_onnx_files` times) and sleeping (fair to other work on a shared machine). Each
    round runs every runner on all inputs in turn, the order reversed every other round,
    with a pause and 50 ms of untimed runs before each runner's turn
    (`singleshot.timing.time_in_turns`): spinning threads left by the previous one would
    steal its cores, and the cores slow down while idle. Median elapsed ms per image."""
    rows = []
    for threads in args.threads:
        for batch in args.batch:
            count = max(1, args.inputs // batch)
            inputs = [torch.from_numpy(x) for x in timing_inputs(images, model, batch, count)]
            runners = {f"{name} spin {'on' if spin else 'off'}": OnnxDetector(path, threads, spin=spin)
                       for name, path in files.items() for spin in (True, False)}  # fmt: skip
            times = time_in_turns([_detector_run(runner) for runner in runners.values()], inputs, args.rounds)
            row = {name: t.median("run") for name, t in zip(runners, times)}
            rows.append({"threads": threads, "batch": batch, **row})
            print(f"  {threads} threads, batch {batch}, ms/image elapsed: "
                  + ", ".join(f"{name} {t:.2f}" for name, t in row.items()))  # fmt: skip
    return rows


def bench_trained(
    tag: str, checkpoint: str, data: str, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    """A trained model: mAP of float and every int8 choice on ``data``'s test split, and speed."""
    model = load(checkpoint)
    test = open_dataset(data, split="test")
    calibration = calibration_images(data, args.calibration_images, split="train")
    files = {"float": export_onnx(model, folder / f"{tag}_float.onnx", with_postprocess=True)}
    for name, layers in LAYER_CHOICES.items():
        path = folder / f"{tag}_int8_{name.replace('+', '_')}.onnx"
        files[f"int8 ({name} float)"] = quantize_onnx(files["float"], path, calibration, float_layers=layers)
    maps = {}
    for name, path in files.items():
        maps[name] = evaluate_model(OnnxDetector(path, threads=2), test, "voc07", progress=False)["map"]
        print(f"  {name}: VOC07 mAP {100 * maps[name]:.2f} on {len(test)} test images")
    images = [test[i][0] for i in range(min(len(test), args.inputs))]
    network = {"float network": export_onnx(model, folder / f"{tag}_float_network.onnx")}
    network["int8 network (first float)"] = quantize_onnx(
        network["float network"], folder / f"{tag}_int8_network.onnx", calibration
    )
    spin_files = {"float": files["float"], "int8": files["int8 (first float)"]}
    return {
        "model": model.preset,
        "checkpoint": str(checkpoint),
        "data": str(data),
        "test_images": len(test),
        "calibration_images": len(calibration),
        "map": maps,
        "speed": time_files(files, images, model, args),
        "network_speed": time_files(network, images, model, args),
        "spin": spin_check(spin_files, images, model, args) if args.spin_check else None,
    }


def peer_model(name: str) -> Any:
    from peers import build_models, build_ssdlite_models

    return build_models()[1] if name == "ssd300" else build_ssdlite_models()[1]


def relative_errors(float_path: Path, int8_path: Path, images: list[torch.Tensor], model: Any) -> dict:
    """||int8 - float|| / ||float|| of the networks' loc and conf over ``images`` (one batch)."""
    x = torch.from_numpy(timing_inputs(images, model, len(images), 1)[0])
    reference = OnnxDetector(float_path, threads=2).run(x)
    quantized = OnnxDetector(int8_path, threads=2).run(x)
    return {
        name: float((q - f).norm() / f.norm()) for name, f, q in zip(("loc", "conf"), reference, quantized)
    }


def bench_peer(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    model = peer_model(name)
    test = open_dataset(args.data, split="test")
    images = [test[i][0] for i in range(min(len(test), args.inputs))]
    calibration = calibration_images(args.data, args.calibration_images, split="train")
    files = {"float": export_onnx(model, folder / f"{name}_float.onnx", with_postprocess=True)}
    files["int8"] = quantize_onnx(files["float"], folder / f"{name}_int8.onnx", calibration)
    network = {"float network": export_onnx(model, folder / f"{name}_float_network.onnx")}
    network["int8 network"] = quantize_onnx(network["float network"], folder / f"{name}_int8_network.onnx",
                                            calibration)  # fmt: skip
    errors = relative_errors(network["float network"], network["int8 network"], images[:8], model)
    print(f"  int8 network vs float, relative error over 8 images: loc {errors['loc']:.3f}, "
          f"conf {errors['conf']:.3f}")  # fmt: skip
    return {
        "model": model.preset,
        "calibration_images": len(calibration),
        "relative_error": errors,
        "speed": time_files(files, images, model, args),
        "network_speed": time_files(network, images, model, args),
    }


def run_model(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The results of one of ``--models``: trained (demo, or SSDLite given a checkpoint) or random weights."""
    if name == "demo":
        return bench_trained("demo", args.checkpoint, args.data, args, folder)
    if name == "ssdlite320" and args.ssdlite_checkpoint:
        return bench_trained("ssdlite320", args.ssdlite_checkpoint, args.ssdlite_data, args, folder)
    return bench_peer(name, args, folder)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="runs/demo/best.pt", help="the demo's trained model")
    parser.add_argument("--data", default="runs/demo/data", help="the demo's data (VOC: train, test)")
    parser.add_argument("--models", nargs="+", default=["demo", "ssd300", "ssdlite320"],
                        choices=("demo", "ssd300", "ssdlite320"))  # fmt: skip
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="ONNX Runtime intra-op threads"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (median over rounds x inputs)")
    parser.add_argument("--inputs", type=int, default=8, help="images per timing round (default 8)")
    parser.add_argument("--calibration-images", type=int, default=100, help="train images to calibrate on")
    parser.add_argument("--out", default="bench-int8", help="folder for the ONNX files and results.json")
    parser.add_argument("--spin-check", action="store_true",
                        help="trained models: also time float and int8 with ONNX Runtime's threads "
                             "spinning and sleeping")  # fmt: skip
    parser.add_argument("--ssdlite-checkpoint", help="a trained SSDLite320 (ssdlite320 then reports mAP too)")
    parser.add_argument("--ssdlite-data", help="its data (VOC: train to calibrate, test to score)")
    args = parser.parse_args()
    if bool(args.ssdlite_checkpoint) != bool(args.ssdlite_data):
        parser.error("--ssdlite-checkpoint and --ssdlite-data go together")
    warnings.simplefilter("ignore")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    results: dict[str, Any] = {
        "cpu": cpu_name(), "onnxruntime": ort.__version__, "torch": torch.__version__,
        "load_average_start": list(os.getloadavg()), "args": vars(args),
    }  # fmt: skip
    print(f"{results['cpu']}, onnxruntime {ort.__version__}, load average {results['load_average_start']}")
    for name in args.models:
        print(f"{name}:")
        results[name] = run_model(name, args, folder)
    results["load_average_end"] = list(os.getloadavg())
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average at the end {results['load_average_end']}; wrote {folder / 'results.json'}")


if __name__ == "__main__":
    main()
