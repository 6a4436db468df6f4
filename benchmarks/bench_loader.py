"""Image loading in worker processes: a batch sent tensor by tensor, or in few tensors.

    .venv/bin/python benchmarks/bench_loader.py [--data runs/demo/data] [--split test]
        [--workers 2] [--batch 8] [--rounds 5] [--model runs/demo/best.pt ...]
        [--images GLOB] [--train-size 160] [--train-batch 32] [--train-batches 20]

`singleshot.evaluation.evaluate_model` reads and decodes the images in DataLoader worker
processes. Every tensor a worker returns reaches the main process as a shared-memory file of
its own, received over a socket; a sample is an image and its boxes, labels and difficult
flags, four tensors. `singleshot.data.transfer.pack_samples` sends a batch as one tensor
instead (the targets' tensors as numpy arrays, pickled with the batch).

1. The loader alone: every image of ``--split`` through ``--workers`` workers, batches of
   ``--batch``, with either collate function (the samples as a list, as before, and
   `pack_samples` + `unpack_samples`), taking turns for ``--rounds`` rounds: the main
   process's wall time per image, and its CPU time per image (what it spends receiving).
2. With ``--model`` files (a checkpoint, or an exported .onnx run by ONNX Runtime on 2
   threads): `evaluate_model` itself, which packs when it has workers, against the same
   loop with the list collate (`_run_model` with ``pack_samples`` swapped for a list),
   the two in turns: ms per image and the mAP of each (equal).

3. The training loader (`singleshot.training.data.make_train_loader`, `SSDAugmentation` at
   ``--train-size``, batches of ``--train-batch``, ``--workers`` workers) over ``--train-batches``
   batches, its collate making each key's target tensors views of one tensor
   (`singleshot.data.collate.share_target_storage`) against one tensor per target and key
   (each view cloned, as before): the main process's wall and CPU time per batch.

4. With ``--model`` files: `singleshot.pipeline.predict_files` (``singleshot detect``'s loop,
   batches of ``--batch``) over the split's image files, decoding the next batch in a thread
   while the model runs, and decoding in line, in turns: ms per image. ``--images GLOB``
   times other files instead (e.g. large photos).

Median over rounds; the CPU's name and load are printed with the figures.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time
from typing import Any
from unittest import mock

import torch
from torch.utils.data import DataLoader

from singleshot.cache import cpu_name
from singleshot.data import open_dataset
from singleshot.data.augment import SSDAugmentation
from singleshot.data.collate import collate
from singleshot.data.transfer import pack_samples, unpack_samples
from singleshot.evaluation import evaluate_model
from singleshot.evaluation import run as evaluation_run
from singleshot.pipeline import predict_files, reads_ahead_by_default
from singleshot.training import data as training_data
from singleshot.training.data import make_train_loader


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _loader_pass(dataset: Any, packed: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(wall, main-process CPU) seconds per image of one pass over ``dataset``."""
    collate = pack_samples if packed else _as_list
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, collate_fn=collate)
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    for received in loader:
        batch = unpack_samples(received) if packed else received
        count += len(batch)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def bench_loader(dataset: Any, args: argparse.Namespace) -> None:
    times: dict[str, list[tuple[float, float]]] = {"tensor by tensor": [], "packed": []}
    for round_ in range(args.rounds):
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for name in order:
            times[name].append(_loader_pass(dataset, name == "packed", args))
    print(f"1. the loader alone: {len(dataset)} images, {args.workers} workers, batches of {args.batch}")
    _print_medians(times, "image")


def _print_medians(times: dict[str, list[tuple[float, float]]], unit: str) -> None:
    """One line per way: the median (wall, main-process CPU) seconds per ``unit``, in ms."""
    for name, rows in times.items():
        wall = statistics.median(r[0] for r in rows) * 1e3
        cpu = statistics.median(r[1] for r in rows) * 1e3
        print(f"   {name:17s} {wall:6.2f} ms per {unit} elapsed, {cpu:6.2f} ms main-process CPU")


def _load_model(path: str) -> Any:
    if path.endswith(".onnx"):
        from singleshot.export import OnnxDetector

        return OnnxDetector(path, threads=2)
    from singleshot.checkpoint import load

    return load(path).optimize_for_inference()


def bench_evaluate(dataset: Any, args: argparse.Namespace) -> None:
    print(f"2. evaluate_model, {args.workers} workers, batches of {args.batch}")
    for path in args.model:
        model = _load_model(path)
        times: dict[str, list[float]] = {"tensor by tensor": [], "packed": []}
        maps = {}
        evaluate_model(
            model, dataset, "voc07", batch_size=args.batch, num_workers=args.workers, progress=False
        )
        for round_ in range(args.rounds):
            for name in times if round_ % 2 == 0 else reversed(list(times)):
                # the old loop: a plain list from the workers, received as it is
                patches = [] if name == "packed" else [
                    mock.patch.object(evaluation_run, "pack_samples", _as_list),
                    mock.patch.object(evaluation_run, "unpack_samples", _as_list),
                ]  # fmt: skip
                for patch in patches:
                    patch.start()
                start = time.perf_counter()
                result = evaluate_model(
                    model, dataset, "voc07", batch_size=args.batch, num_workers=args.workers, progress=False
                )
                times[name].append((time.perf_counter() - start) / len(dataset))
                for patch in patches:
                    patch.stop()
                maps[name] = result["map"]
        cells = [
            f"{name} {statistics.median(t) * 1e3:.2f} ms (mAP {100 * maps[name]:.2f})"
            for name, t in times.items()
        ]
        print(f"   {os.path.basename(path)}: " + ", ".join(cells))


def _separate_targets(batch: Any) -> Any:
    """`collate`, then every target tensor a storage of its own (the collate before views)."""
    x, targets = collate(batch)
    return x, [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def _train_pass(dataset: Any, shared: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(wall, main-process CPU) seconds per batch over ``--train-batches`` batches."""
    transform = SSDAugmentation(size=args.train_size)
    with mock.patch.object(training_data, "collate", collate if shared else _separate_targets):
        loader = make_train_loader(dataset, transform, args.train_batch, seed=0, workers=args.workers)
        batches = iter(loader)
        next(batches)  # the workers started
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.train_batches):
            next(batches)
        result = (
            (time.perf_counter() - wall) / args.train_batches,
            (time.process_time() - cpu) / args.train_batches,
        )
        del batches
    return result


def bench_train_loader(data: str, args: argparse.Namespace) -> None:
    dataset = open_dataset(data, split="train")
    times: dict[str, list[tuple[float, float]]] = {"tensor by tensor": [], "views of one": []}
    for round_ in range(args.rounds):
        for name in times if round_ % 2 == 0 else reversed(list(times)):
            times[name].append(_train_pass(dataset, name == "views of one", args))
    size, batch = args.train_size, args.train_batch
    print(f"3. the training loader: batches of {batch} at {size} px, {args.workers} workers")
    _print_medians(times, "batch")


def bench_read_ahead(dataset: Any, args: argparse.Namespace) -> None:
    paths = (
        sorted(glob.glob(args.images))
        if args.images
        else [dataset.image_path(i) for i in range(len(dataset))]
    )
    print(f"4. predict_files over {len(paths)} files, batches of {args.batch}: reading ahead or in line")
    for path in args.model:
        model = _load_model(path)
        list(predict_files(model, paths[: 2 * args.batch], batch_size=args.batch))
        times: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for ahead in times if round_ % 2 == 0 else reversed(list(times)):
                start = time.perf_counter()
                count = sum(1 for _ in predict_files(model, paths, batch_size=args.batch, prefetch=ahead))
                times[ahead].append((time.perf_counter() - start) / count)
        default = "ahead" if reads_ahead_by_default(model) else "in line"
        print(f"   {os.path.basename(path)}: ahead {statistics.median(times[True]) * 1e3:.2f} ms, in line "
              f"{statistics.median(times[False]) * 1e3:.2f} ms per image (default: {default})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="runs/demo/data", help="a dataset root (default runs/demo/data)")
    parser.add_argument("--split", default="test", help="its split (default test)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns (default 5)")
    parser.add_argument("--model", nargs="*", default=[], help="checkpoints or .onnx files for section 2")
    parser.add_argument(
        "--images", default=None, help="a glob of image files for section 4 (default: the split's)"
    )
    parser.add_argument("--train-size", type=int, default=160, help="training input side (default 160)")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--train-batches", type=int, default=20, help="training batches timed (default 20)")
    args = parser.parse_args()
    dataset = open_dataset(args.data, split=args.split)
    print(f"{cpu_name()}, load average {os.getloadavg()}")
    bench_loader(dataset, args)
    if args.model:
        bench_evaluate(dataset, args)
    bench_train_loader(args.data, args)
    if args.model:
        bench_read_ahead(dataset, args)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
