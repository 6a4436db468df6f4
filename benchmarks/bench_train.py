"""Training-step speed of SSD300 in both memory formats against torchvision's ``ssd300_vgg16``,
on the same batch, and whether the trial of ``singleshot train`` picks the faster format.

    .venv/bin/python benchmarks/bench_train.py [--batch-size 8] [--steps 3] [--rounds 2] [--threads 2]
    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --device cuda --batch-size 32 --amp bf16

One training step = forward, loss, backward, SGD update (momentum 0.9, weight decay 5e-4),
the model in train mode. The learning rate is 1e-5: from random weights (no ImageNet
backbone) the paper's 1e-3 diverges within three steps, for both models alike (their
losses agree), and NaN arithmetic would distort the timing. Both networks hold the same weights (torchvision's
converted with `singleshot.weights.convert`; our ``ssd300_coco`` layout with 21 classes
and ``prior_clip="size"`` has torchvision's default boxes) and see the same seeded batch
of 300x300 images with 1-6 boxes each.

Each run is a fresh process (the parent only launches and reports), because glibc's
malloc settings are process-wide:

- ``singleshot channels-last`` and ``singleshot NCHW``: as ``singleshot train`` runs
  (`singleshot.runtime.tune_malloc`), in each memory format;
- ``torchvision``: ``ssd300_vgg16`` as its users run it (NCHW);
- ``torchvision+malloc``: the same with our malloc settings, to show what is left of the
  difference without them;
- ``trial``: the timed trial ``singleshot train`` starts with (``channels_last: auto``,
  `singleshot.layout.choose_memory_format` at the run's batch), measured afresh
  (the cache neither read nor written): the layout a run would take on this machine.

Runs alternate (trial, singleshot channels-last, singleshot NCHW, torchvision,
torchvision+malloc, trial, ...) ``--rounds`` times, so that load from other processes falls
on all alike; each step run reports the median of ``--steps`` timed steps after one warm-up
step. Printed: the CPU (name, the kernels ATen and oneDNN may use), each run's layout,
seconds per step split into forward+loss / backward / update, images per second, and
torchvision's time over ours (> 1: singleshot is faster) for ours in the layout the trial
chose; then each trial's decision against the layout measured faster at the full batch.
Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STEP_KINDS = ("singleshot channels-last", "singleshot NCHW", "torchvision", "torchvision+malloc")
KINDS = ("trial", *STEP_KINDS)
OURS = {"channels_last": "singleshot channels-last", "contiguous": "singleshot NCHW"}


def make_batch(batch_size: int, num_classes: int, seed: int = 0):
    """(images float (B, 3, 300, 300) in [0, 1], targets with boxes xyxy as fractions)."""
    import torch

    from peers import random_targets

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, 300, 300, generator=g)
    targets = random_targets(batch_size, g, num_classes)
    return images, targets


def our_model(tv, num_classes: int, channels_last: bool):
    """Our ``ssd300_coco`` with torchvision's weights, in the given memory format."""
    import singleshot
    from singleshot.layout import apply_memory_format, forced_layout
    from singleshot.weights import convert

    model = singleshot.build_model("ssd300_coco", num_classes=num_classes, prior_clip="size")
    model.load_state_dict(convert(tv.state_dict(), "torchvision"), strict=True)
    return apply_memory_format(model, forced_layout(channels_last, "the benchmark"))


def setup(args: argparse.Namespace):
    import torch
    from torchvision.models.detection import ssd300_vgg16

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    return device, amp, tv


def trial_worker(args: argparse.Namespace) -> dict:
    """The layout trial of ``singleshot train`` for this batch, afresh; its decision and cost."""
    from singleshot.layout import choose_memory_format
    from singleshot.runtime import tune_malloc

    tune_malloc()
    device, amp, tv = setup(args)
    model = our_model(tv, 21, channels_last=False).to(device).train()
    shape = (args.batch_size, 3, 300, 300)
    start = time.perf_counter()
    decision = choose_memory_format(model, shape, training=True, autocast_dtype=amp, use_cache=False)
    return {**decision.to_dict(), "wall_s": time.perf_counter() - start}


def step_worker(kind: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of one configuration in this process."""
    import torch

    from singleshot.loss import MultiBoxLoss
    from singleshot.runtime import tune_malloc

    if kind != "torchvision":
        tune_malloc()
    device, amp, tv = setup(args)
    num_classes = 21
    images, targets = make_batch(args.batch_size, num_classes)
    if kind.startswith("singleshot"):
        model = our_model(tv, num_classes, channels_last=kind == OURS["channels_last"])
        del tv
        criterion = MultiBoxLoss(num_classes)
        mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
        layout = torch.channels_last if model.channels_last else torch.contiguous_format
        x = (images * 255 - mean).to(device).contiguous(memory_format=layout)
        batch_targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

        def forward_loss():
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loc, conf = model(x)
            loss_loc, loss_conf = criterion(loc.float(), conf.float(), model.priors, batch_targets)
            return loss_loc + loss_conf
    else:
        model = tv
        tv_images = list(images.to(device))
        tv_targets = [
            {"boxes": t["boxes"].to(device) * 300, "labels": t["labels"].to(device)} for t in targets
        ]

        def forward_loss():
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                losses = model(tv_images, tv_targets)
            return losses["bbox_regression"] + losses["classification"]

    model.to(device).train()
    result = time_steps(model, forward_loss, device, amp, args.steps, kind)
    weight = next(p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    result["layout"] = (
        "channels_last" if weight.is_contiguous(memory_format=torch.channels_last) else "contiguous"
    )
    return result


def time_steps(model, forward_loss, device, amp, steps: int, kind: str) -> dict:
    """Median seconds of ``steps`` SGD steps (after one warm-up): step, forward_loss, backward, update."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    phases: dict[str, list[float]] = {"forward_loss": [], "backward": [], "update": [], "step": []}
    for step in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = forward_loss()
        sync()
        t1 = time.perf_counter()
        scaler.scale(loss).backward()
        sync()
        t2 = time.perf_counter()
        scaler.step(optimizer)
        scaler.update()
        sync()
        t3 = time.perf_counter()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{kind}: non-finite loss {float(loss)}")
        if step:  # the first step is a warm-up
            for name, value in (("forward_loss", t1 - t0), ("backward", t2 - t1), ("update", t3 - t2),
                                ("step", t3 - t0)):  # fmt: skip
                phases[name].append(value)
    return {name: statistics.median(values) for name, values in phases.items()}


def launch(kind: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--worker", kind, "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device,
        "--amp", args.amp,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(args: argparse.Namespace) -> str:
    """The device, and for a CPU the kernels ATen and oneDNN may use here."""
    import torch

    from singleshot.cache import cpu_name

    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}"
    isa = os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA") or "unset"
    return (
        f"{cpu_name()}, {args.threads} threads (ATen kernels: {torch.backends.cpu.get_cpu_capability()}, "
        f"DNNL_MAX_CPU_ISA: {isa}), torch {torch.__version__}"
    )


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    shown = {"channels_last": "channels-last", "contiguous": "NCHW"}
    best = {kind: min(runs[kind], key=lambda r: r["step"]) for kind in STEP_KINDS}
    trials = runs["trial"]
    chosen = statistics.mode(t["layout"] for t in trials)  # the trial's usual decision
    ours = best[OURS[chosen]]["step"]
    print(f"SSD300 training step, batch {args.batch_size}, amp={args.amp}, median of {args.steps} steps, "
          f"best of {args.rounds} round(s)")  # fmt: skip
    print(f"machine: {machine(args)}")
    print(f"{'run':26s} {'layout':>13s} {'s/step':>8s} {'fwd+loss':>9s} {'backward':>9s} {'update':>8s} "
          f"{'img/s':>7s} {'tv/ours':>8s}")  # fmt: skip
    for kind in STEP_KINDS:
        r = best[kind]
        print(f"{kind:26s} {shown[r['layout']]:>13s} {r['step']:8.3f} {r['forward_loss']:9.3f} "
              f"{r['backward']:9.3f} {r['update']:8.3f} {args.batch_size / r['step']:7.2f} "
              f"{r['step'] / ours:8.2f}")  # fmt: skip
    winner = min(OURS, key=lambda layout: best[OURS[layout]]["step"])
    steps = {layout: best[OURS[layout]]["step"] for layout in OURS}
    print(f"faster at batch {args.batch_size}: {shown[winner]} ({steps['channels_last']:.3f} s "
          f"channels-last, {steps['contiguous']:.3f} s NCHW per step)")  # fmt: skip
    for number, t in enumerate(trials, 1):
        agrees = "agrees" if t["layout"] == winner else "DISAGREES"
        seconds = t["seconds"]
        print(f"trial {number}: {shown[t['layout']]} ({seconds['channels_last']:.3f} s channels-last, "
              f"{seconds['contiguous']:.3f} s NCHW per step of {t['trial_batch']} image(s); the trial "
              f"took {t['wall_s']:.1f} s): {agrees}")  # fmt: skip
    print(f"tv/ours is for singleshot in the trial's layout ({shown[chosen]}), as `singleshot train` runs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8; 32 on a GPU)")
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per run, after one warm-up (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the runs (default 1)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype (CUDA)"
    )
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = trial_worker(args) if args.worker == "trial" else step_worker(args.worker, args)
        print(json.dumps(result))
        return
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            runs[kind].append(launch(kind, args))
    report(args, runs)


if __name__ == "__main__":
    main()
