"""GPU check, input pipeline: can the training loader feed the GPU?

The training loader (`singleshot.training.data.make_train_loader`, pinned memory on a GPU)
reads VOC-sized JPEG files (500 x 375, written by ``bench_data.write_dataset``) and runs
the paper's augmentation (`SSDAugmentation` at 300 px: colour distortion, zoom-out,
min-IoU crop, flip) in N worker processes. Its images/s, after the first batch (worker
start-up), is set against the fastest singleshot SSD300 and SSDLite320 training step the
training section measured on this device: the share of the time the GPU would be busy.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench_data import write_dataset
from gpu_report import Section

BUSY_TARGET = 0.9


class JpegFiles:
    """(path, target) pairs as a detection dataset: uint8 (3, H, W) images, pixel targets."""

    def __init__(self, items: list[tuple[Path, dict[str, torch.Tensor]]]) -> None:
        self.items = items
        self.classes = ["__background__"] + [f"class{i}" for i in range(1, 21)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from singleshot.imageio import read_image

        path, target = self.items[index]
        return read_image(path), dict(target)


def loader_rate(dataset, workers: int, batch: int, pin: bool, seconds: float, most: int) -> tuple[float, int]:
    """(images/s, batches timed) of the training loader after its first batch."""
    from singleshot.data import SSDAugmentation
    from singleshot.training.data import make_train_loader
    from singleshot.transforms import VGG_MEAN

    transform = SSDAugmentation(300, VGG_MEAN)
    loader = make_train_loader(dataset, transform, batch, seed=0, workers=workers, pin_memory=pin)
    stream = iter(loader)
    next(stream)  # start-up: workers forked, their first batches under way
    start, batches = time.perf_counter(), 0
    while batches < most and (batches < 2 or time.perf_counter() - start < seconds):
        next(stream)
        batches += 1
    elapsed = time.perf_counter() - start
    del stream
    return batches * batch / elapsed, batches


def worker_counts(device: torch.device, smoke: bool) -> list[int]:
    """The trainer's default for this device and, on a GPU, every core but one."""
    from singleshot.training.data import default_workers

    if smoke:
        return [0, 1]
    return sorted({default_workers(device.type), max((os.cpu_count() or 2) - 1, 1)})


def fastest_steps(context: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """{model: (images/s, amp)} of singleshot's fastest training run per model."""
    best: dict[str, tuple[float, str]] = {}
    for row in context.get("train_rows", []):
        if row["impl"] == "singleshot" and row["images_per_s"] > best.get(row["model"], (0.0, ""))[0]:
            best[row["model"]] = (row["images_per_s"], row["amp"])
    return best


def pipeline_section(section: Section, context: dict[str, Any]) -> None:
    """Section 3: the loader's rate per worker count against the GPU's step rate."""
    device, smoke = context["device"], context["smoke"]
    count, batch, most = (8, 4, 3) if smoke else (96, 32, 40)
    steps = fastest_steps(context)
    with tempfile.TemporaryDirectory() as folder:
        dataset = JpegFiles(write_dataset(Path(folder), count))
        for workers in worker_counts(device, smoke):
            if section.out_of_time(f"{workers} workers"):
                continue
            seconds = min(10.0, section.left() / 2)
            rate, batches = loader_rate(dataset, workers, batch, device.type == "cuda", seconds, most)
            row: dict[str, Any] = {"workers": workers, "batch": batch, "images_per_s": rate,
                                   "batches": batches, "per_worker": rate / max(workers, 1)}  # fmt: skip
            for model, (gpu_rate, amp) in steps.items():
                row[f"{model}_{amp}_step_images_per_s"] = gpu_rate
                row[f"{model}_busy"] = min(1.0, rate / gpu_rate)
            section.rows.append(row)
    section.notes += verdicts(section.rows, steps)


def verdicts(rows: list[dict[str, Any]], steps: dict[str, tuple[float, str]]) -> list[str]:
    """Whether the loader keeps each model's step busy; how much it starves it if not."""
    if not rows:
        return []
    if not steps:
        return ["no training step rate was measured on this device: the GPU's share cannot be given"]
    best = max(rows, key=lambda row: row["images_per_s"])
    notes = []
    for model, (gpu_rate, amp) in steps.items():
        busy = min(1.0, best["images_per_s"] / gpu_rate)
        if busy >= BUSY_TARGET:
            notes.append(f"{model} {amp}: {best['workers']} workers keep the step {busy:.0%} busy")
            continue
        notes.append(
            f"{model} {amp}: the loader starves the step: {best['images_per_s']:.0f} images/s at "
            f"{best['workers']} workers against {gpu_rate:.0f} the step takes ({busy:.0%} busy, "
            f"{gpu_rate / best['images_per_s']:.1f}x short). The fix to measure next: augmentation on "
            "the GPU (the same operations on CUDA tensors after decoding) or NVIDIA DALI (decoding "
            "and augmentation on the GPU)"
        )
    return notes
