"""The post-processing's speed: PyTorch's softmax kernels, `predict`'s softmax and `detect`,
and the exported graph's post-processing in ONNX Runtime.

    .venv/bin/python benchmarks/bench_postprocess.py [--checkpoint runs/demo/best.pt]
        [--data runs/demo/data] [--threads 2] [--rounds 30]

1. The softmax over C classes of (B, P, C) logits, PyTorch on ``--threads`` threads: along
   the last dimension (``torch.softmax(conf, -1)``) and across the priors (dimension 1 of
   the transposed logits), for several class counts; `class_probabilities` takes the second
   below 16 classes.
2. `predict`'s softmax and `detect` on the model's outputs for the data's first 8 test
   images, batch 1 and 8, with `class_probabilities` and with the last-dimension softmax,
   in alternating rounds.
3. The post-processing graph `export_onnx` writes (`DetectorGraph` with ONNX's
   NonMaxSuppression), fed those outputs in ONNX Runtime on one thread, with the softmax
   by products (`ForegroundScoresByProducts`, what the export uses) and with ONNX's
   Softmax (`ForegroundScores`), in alternating rounds.

Medians in ms per image (µs per call for 1), with the CPU's name. The model's
post-processing settings apply (``model.postprocess``). glibc's malloc keeps large blocks
mapped (`singleshot.runtime.tune_malloc`, as the command line sets it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from singleshot.cache import cpu_name
from singleshot.checkpoint import load
from singleshot.data import open_dataset
from singleshot.export.graph import DetectorGraph, ForegroundScores, ForegroundScoresByProducts
from singleshot.export.onnx_ops import ONNX_TRANSLATIONS, OnnxNMS
from singleshot.export.runtime import session_options
from singleshot.postprocess import class_probabilities, detect
from singleshot.runtime import tune_malloc
from singleshot.transforms import preprocess

CLASS_COUNTS = ((2, 1, 3208), (7, 1, 3208), (7, 8, 8732), (8, 1, 3208), (12, 1, 3208), (16, 1, 3208),
                (21, 8, 8732), (91, 8, 8732))  # fmt: skip


def in_turns(runs: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each run, the runs taking turns round by round (the order
    reversed every other round), each turn ``calls`` calls after one untimed."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            runs[name]()
            start = time.perf_counter()
            for _ in range(calls):
                runs[name]()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def softmax_kernels(rounds: int) -> None:
    print("1. softmax over the classes, µs per call: last dimension | across the priors")
    generator = torch.Generator().manual_seed(0)
    for classes, batch, priors in CLASS_COUNTS:
        conf = 4 * torch.randn(batch, priors, classes, generator=generator)
        times = in_turns(
            {"last": lambda c=conf: torch.softmax(c, dim=-1),
             "across": lambda c=conf: torch.softmax(c.transpose(1, 2), dim=1)},
            rounds, calls=10,
        )  # fmt: skip
        last, across = 1e6 * times["last"], 1e6 * times["across"]
        chosen = "across" if classes < 16 else "last"
        print(f"   {classes:3d} classes, {batch} x {priors} priors: {last:8.1f} | {across:8.1f}"
              f" ({last / across:.2f}x; class_probabilities: {chosen})")  # fmt: skip


def predict_postprocessing(model: Any, outputs: list, rounds: int) -> None:
    print("2. predict's softmax + detect, ms per image: class_probabilities | last-dimension softmax")
    settings = model.postprocess.to_dict()
    for batch in (1, 8):
        batches = [
            tuple(torch.cat(parts) for parts in zip(*outputs[i : i + batch])) for i in range(0, 8, batch)
        ]

        def run(
            softmax: Callable[[torch.Tensor], torch.Tensor], batches: list = batches
        ) -> Callable[[], None]:
            def all_batches() -> None:
                with torch.inference_mode():
                    for loc, conf in batches:
                        detect(loc, softmax(conf), model.priors, **settings)

            return all_batches

        times = in_turns(
            {"new": run(class_probabilities), "last": run(lambda conf: torch.softmax(conf, dim=-1))},
            rounds, calls=1,
        )  # fmt: skip
        print(f"   batch {batch}: {1e3 * times['new'] / 8:.3f} | {1e3 * times['last'] / 8:.3f}")


class _Outputs(torch.nn.Module):
    """x (B, P * (4 + C)) -> the network's loc (B, P, 4) and conf (B, P, C), read from x."""

    def __init__(self, priors: int, classes: int) -> None:
        super().__init__()
        self.priors, self.classes = priors, classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.priors * 4
        return x[:, :split].reshape(-1, self.priors, 4), x[:, split:].reshape(-1, self.priors, self.classes)


def exported_postprocessing(model: Any, outputs: list, rounds: int, folder: Path) -> None:
    import onnxruntime as ort

    print("3. the exported post-processing graph in ONNX Runtime, 1 thread, ms per image:"
          " softmax by products (the export's) | ONNX Softmax")  # fmt: skip
    priors, classes = len(model.priors), model.num_classes
    settings = model.postprocess.to_dict()
    inputs = [torch.cat([loc.flatten(1), conf.flatten(1)], 1).numpy() for loc, conf in outputs]
    sessions = {}
    for name, scores in (("products", ForegroundScoresByProducts()), ("softmax", ForegroundScores())):
        nms = OnnxNMS(settings["nms_threshold"], settings["score_threshold"])
        graph = DetectorGraph(
            _Outputs(priors, classes), model.priors, classes, **settings, nms=nms, scores=scores
        )
        with torch.no_grad():
            program = torch.onnx.export(
                graph.eval(), (torch.zeros(2, priors * (4 + classes)),), dynamo=True, opset_version=18,
                input_names=["x"], custom_translation_table=ONNX_TRANSLATIONS, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
            )  # fmt: skip
        path = folder / f"{name}.onnx"
        program.save(str(path))
        sessions[name] = ort.InferenceSession(
            str(path), session_options(1), providers=["CPUExecutionProvider"]
        )
    first, second = ([s.run(None, {"x": x}) for x in inputs] for s in sessions.values())
    same = all(np.array_equal(a[3], b[3]) and np.array_equal(a[2], b[2]) for a, b in zip(first, second))
    runs = {
        name: (lambda s=session: [s.run(None, {"x": x}) for x in inputs])
        for name, session in sessions.items()
    }
    times = in_turns(runs, rounds, calls=5)
    print(f"   batch 1: {1e3 * times['products'] / 8:.3f} | {1e3 * times['softmax'] / 8:.3f}"
          f" (the same counts and labels on all 8 images: {same})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", default="runs/demo/best.pt", help="a trained model (default: the demo's)"
    )
    parser.add_argument("--data", default="runs/demo/data", help="its data; the first 8 test images are used")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads for 1 and 2 (default 2)")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds (median; default 30)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as the command line does: large blocks stay mapped between calls
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads (1 and 2)")
    softmax_kernels(args.rounds)
    model = load(args.checkpoint).eval()
    test = open_dataset(args.data, split="test")
    std = getattr(model, "image_std", None)
    with torch.inference_mode():
        outputs = [model(preprocess([test[i][0]], model.image_size, model.image_mean, std=std))
                   for i in range(min(8, len(test)))]  # fmt: skip
    if len(outputs) < 8:
        sys.exit(f"{args.data}: needs at least 8 test images, has {len(outputs)}")
    print(f"{model.preset}: {len(model.priors)} priors, {model.num_classes} classes, {model.postprocess}")
    predict_postprocessing(model, outputs, args.rounds)
    with tempfile.TemporaryDirectory() as folder:
        exported_postprocessing(model, outputs, args.rounds, Path(folder))


if __name__ == "__main__":
    main()
