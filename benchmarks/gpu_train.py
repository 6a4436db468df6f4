"""GPU check, training: `Trainer.run_step` against torchvision's SSD on the same weights.

Each run (model, batch, AMP) times singleshot's own training step (``Trainer.run_step``: the
step ``singleshot train`` runs, with its one read of the loss per step) and torchvision's
``ssd300_vgg16`` / ``ssdlite320_mobilenet_v3_large`` trained by the loop its references
use (autocast, GradScaler for fp16, SGD), both on one synthetic batch at the network's
input size kept in pinned host memory and copied to the device every step. Measured:
images/s over the timed steps (wall clock, one synchronize at the end), the time split
(data / forward + loss / backward / update, from CUDA events, so the steps are not
serialised by the measurement), peak memory and the host syncs of one step
(``torch.cuda.set_sync_debug_mode``).
"""

from __future__ import annotations

import gc
import itertools
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from gpu_report import Section
from peers import NUM_CLASSES, SSDLITE_CLASSES, build_models, build_ssdlite_models, random_targets

# (model, batch, amp): the full check, and the smoke run's miniature
TRAIN_RUNS = {
    False: [
        ("ssd300", 32, "fp32"),
        ("ssd300", 32, "bf16"),
        ("ssd300", 32, "fp16"),
        ("ssdlite320", 64, "bf16"),
    ],
    True: [("ssd300", 1, "bf16")],
}
# model -> (our preset, input size, prior_clip, classes): as `peers` builds them
PRESETS = {
    "ssd300": ("ssd300_coco", 300, "size", NUM_CLASSES),
    "ssdlite320": ("ssdlite320_coco", 320, None, SSDLITE_CLASSES),
}
PHASES = ("data", "forward_loss", "backward", "update")
AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Marks:
    """Phase boundaries of each step: CUDA events on a GPU (read after the timed steps), the
    host clock elsewhere. ``split_ms()``: mean milliseconds per phase."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, Any]]] = []
        self.active = False

    def begin(self) -> None:
        self.active = True
        self.steps.append([("start", self._stamp())])

    def mark(self, phase: str) -> None:
        """End ``phase`` now (ignored outside a timed step)."""
        if self.active:
            self.steps[-1].append((phase, self._stamp()))

    def end(self) -> None:
        self.mark("other")
        self.active = False

    def _stamp(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def split_ms(self) -> dict[str, float]:
        totals = dict.fromkeys((*PHASES, "other"), 0.0)
        for stamps in self.steps:
            for (_, before), (phase, after) in itertools.pairwise(stamps):
                seconds = before.elapsed_time(after) / 1e3 if self.cuda else after - before
                totals[phase] += seconds * 1e3
        return {phase: value / max(len(self.steps), 1) for phase, value in totals.items()}


def synthetic_batch(batch: int, size: int, num_classes: int, pin: bool):
    """(images float (B, 3, S, S) in [0, 1], targets with xyxy fraction boxes and labels), seeded."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = random_targets(batch, g, num_classes)
    for i, target in enumerate(targets):
        target["image_id"] = f"synthetic{i}"
    return (images.pin_memory() if pin else images), targets


class NamedSet:
    """A stand-in training set for building a `Trainer`: its class names (the step's batches
    are given directly, so no image is ever read)."""

    def __init__(self, num_classes: int) -> None:
        self.classes = ["__background__"] + [f"class{i}" for i in range(1, num_classes)]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise IndexError("the benchmark gives its batches directly")


def singleshot_step(kind: str, batch: int, amp: str, device: torch.device, weights, marks: Marks, folder):
    """`Trainer.run_step` of the preset on one synthetic batch; returns (step, model, amp used)."""
    from singleshot.training import TrainConfig
    from singleshot.training.trainer import Trainer

    preset, size, clip, num_classes = PRESETS[kind]
    amp_mode = "none" if amp == "fp32" else amp
    config = TrainConfig(model=preset, out=str(folder), batch_size=batch, iterations=10**6, workers=0,
                         device=str(device), amp=amp_mode, val_split=None, prior_clip=clip)  # fmt: skip
    config.optimizer.lr = 1e-5  # random weights: the paper's 1e-3 diverges within steps
    config.schedule.warmup_iterations = 0
    trainer = Trainer(config, NamedSet(num_classes), progress=False)
    trainer.model.load_state_dict(weights)
    images, targets = synthetic_batch(batch, size, trainer.model.num_classes, device.type == "cuda")
    mean = torch.tensor(trainer.model.image_mean).view(1, 3, 1, 1)
    x = images * 255 - mean
    trainer.batches = itertools.repeat((x.pin_memory() if device.type == "cuda" else x, targets))
    trainer.start, trainer.budget_s = time.perf_counter(), math.inf
    model = trainer.model
    model.register_forward_pre_hook(lambda *_: marks.mark("data"))
    model.register_full_backward_pre_hook(lambda *_: marks.mark("forward_loss"))
    trainer.optimizer.register_step_pre_hook(lambda *_: marks.mark("backward"))
    trainer.optimizer.register_step_post_hook(lambda *_: marks.mark("update"))
    used = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
    return trainer.run_step, trainer, used


def torchvision_step(tv, kind: str, batch: int, amp: str, device: torch.device, marks: Marks):
    """torchvision's training step as its reference scripts run it, on the same kind of batch."""
    _, size, _, num_classes = PRESETS[kind]
    tv.to(device).train()
    dtype = AMP[amp]
    optimizer = torch.optim.SGD(tv.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    images, targets = synthetic_batch(batch, size, num_classes, device.type == "cuda")
    pixels = [{"boxes": t["boxes"] * size, "labels": t["labels"]} for t in targets]
    blocking = device.type != "cuda"

    def step() -> None:
        x = images.to(device, non_blocking=not blocking)
        moved = [{k: v.to(device, non_blocking=not blocking) for k, v in t.items()} for t in pixels]
        marks.mark("data")
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = tv(list(x), moved)
        loss = losses["bbox_regression"] + losses["classification"]
        marks.mark("forward_loss")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        marks.mark("backward")
        scaler.step(optimizer)
        scaler.update()
        marks.mark("update")

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """Host syncs of one call of ``step`` (CUDA's sync debug mode); None on the CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(
    step: Callable[[], None], marks: Marks, device: torch.device, plan: dict[str, Any]
) -> dict[str, Any]:
    """Warm up, then time steps until ``plan``'s step count or seconds run out (at least its
    ``min_steps``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(plan["warmup"]):
        step()
    synchronize(device)
    marks.steps.clear()
    start, steps = time.perf_counter(), 0
    while steps < plan["steps"] and (
        steps < plan["min_steps"] or time.perf_counter() - start < plan["seconds"]
    ):
        marks.begin()
        step()
        marks.end()
        steps += 1
    synchronize(device)
    seconds = time.perf_counter() - start
    split = marks.split_ms()
    return {
        "step_ms": 1e3 * seconds / steps, "steps": steps,
        **{f"{phase}_ms": split[phase] for phase in PHASES},
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "host_syncs_per_step": count_syncs(step, device),
    }  # fmt: skip


def one_run(
    kind: str, batch: int, amp: str, device: torch.device, plan: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows for singleshot and torchvision on one (model, batch, amp)."""
    tv, ours = build_ssdlite_models() if kind == "ssdlite320" else build_models()
    marks = Marks(device)
    with tempfile.TemporaryDirectory() as folder:
        step, trainer, used = singleshot_step(kind, batch, amp, device, ours.state_dict(), marks, folder)
        del ours
        mine = measure(step, marks, device, plan)
        if trainer.step_losses is None:
            raise RuntimeError(f"{kind} {amp}: the singleshot step's loss was not finite")
        del trainer, step
    theirs = measure(torchvision_step(tv, kind, batch, used, device, marks), marks, device, plan)
    rows = []
    for impl, result in (("singleshot", mine), ("torchvision", theirs)):
        images_per_s = batch * 1e3 / result["step_ms"]
        rows.append({"model": kind, "batch": batch, "amp": used, "impl": impl, "images_per_s": images_per_s,
                     **result})  # fmt: skip
    rows[0]["vs_torchvision"] = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    return rows


def training_section(section: Section, context: dict[str, Any]) -> None:
    """Section 2: every run of ``TRAIN_RUNS`` that fits the section's time share."""
    device, smoke = context["device"], context["smoke"]
    runs = TRAIN_RUNS[smoke]
    plan = {"warmup": 1, "steps": 1, "min_steps": 1} if smoke else {"warmup": 3, "steps": 30, "min_steps": 3}
    for index, (kind, batch, amp) in enumerate(runs):
        name = f"{kind} batch {batch} {amp}"
        if section.out_of_time(name):
            continue
        plan["seconds"] = min(8.0, section.left() / (2 * (len(runs) - index)))
        try:
            section.rows += one_run(kind, batch, amp, device, plan)
        except torch.cuda.OutOfMemoryError as error:
            section.skip(name, f"out of GPU memory: {str(error).splitlines()[0]}")
        finally:
            gc.collect()  # the run's models and trainer, before the next run allocates
            if device.type == "cuda":
                torch.cuda.empty_cache()
    context["train_rows"] = section.rows
    if smoke:
        section.skip("ssdlite320 and the other AMP modes", "not in the smoke run")
    if device.type != "cuda":
        section.notes.append("AMP is off on the CPU (the trainer's rule): the bf16 runs ran in fp32")
    section.notes.append("targets: SSD300 AMP images/s >= 1.3x torchvision's (vs_torchvision)")
