"""Training-step speed of SSD300 against torchvision's ``ssd300_vgg16``, on the same batch.

    .venv/bin/python benchmarks/bench_train.py [--batch-size 8] [--steps 5] [--threads 2]
    .venv/bin/python benchmarks/bench_train.py --device cuda --batch-size 32 --amp bf16

One training step = forward, loss, backward, SGD update (momentum 0.9, weight decay 5e-4),
the model in train mode. The learning rate is 1e-5: from random weights (no ImageNet
backbone) the paper's 1e-3 diverges within three steps, for both models alike (their
losses agree), and NaN arithmetic would distort the timing. Both networks hold the same weights (torchvision's
converted with `singleshot.weights.convert`; our ``ssd300_coco`` layout with 21 classes
and ``prior_clip="size"`` has torchvision's default boxes) and see the same seeded batch
of 300x300 images with 1-6 boxes each.

Each configuration runs in its own fresh process (the parent only launches and reports),
because glibc's malloc settings are process-wide:

- ``singleshot``: as ``singleshot train`` runs it (`singleshot.runtime.tune_malloc`, the
  network's weights and input channels-last, as the trainer runs it by default);
- ``torchvision``: ``ssd300_vgg16`` as its users run it;
- ``torchvision+malloc``: the same with our malloc settings, to show what is left of the
  difference without them.

Runs alternate (singleshot, torchvision, torchvision+malloc, singleshot, ...) ``--rounds``
times so that load from other processes falls on all alike; each reports the median of
``--steps`` timed steps after one warm-up step. Printed: seconds per step, split into
forward+loss / backward / update, images per second, and torchvision's time over ours
(> 1: singleshot is faster). Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

KINDS = ("singleshot", "torchvision", "torchvision+malloc")


def make_batch(batch_size: int, num_classes: int, seed: int = 0):
    """(images float (B, 3, 300, 300) in [0, 1], targets with boxes xyxy as fractions)."""
    import torch

    from peers import random_targets

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, 300, 300, generator=g)
    targets = random_targets(batch_size, g, num_classes)
    return images, targets


def worker(kind: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of one configuration in this process."""
    import torch
    from torchvision.models.detection import ssd300_vgg16

    import singleshot
    from singleshot.loss import MultiBoxLoss
    from singleshot.runtime import tune_malloc
    from singleshot.weights import convert

    if kind in ("singleshot", "torchvision+malloc"):
        tune_malloc()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    num_classes = 21
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
    images, targets = make_batch(args.batch_size, num_classes)
    if kind == "singleshot":
        model = singleshot.build_model("ssd300_coco", num_classes=num_classes, prior_clip="size")
        model.load_state_dict(convert(tv.state_dict(), "torchvision"), strict=True)
        model = model.to(memory_format=torch.channels_last)  # as the trainer runs it by default
        model.channels_last = True
        del tv
        criterion = MultiBoxLoss(num_classes)
        mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
        x = (images * 255 - mean).to(device).contiguous(memory_format=torch.channels_last)
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
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    phases = {"forward_loss": [], "backward": [], "update": [], "step": []}
    for step in range(args.steps + 1):
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
    result = {name: statistics.median(values) for name, values in phases.items()}
    result["device"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    )
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8; 32 on a GPU)")
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per run, after one warm-up (default 3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds of the three runs (default 1)"
    )
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
        print(json.dumps(worker(args.worker, args)))
        return

    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            runs[kind].append(launch(kind, args))
    best = {kind: min(results, key=lambda r: r["step"]) for kind, results in runs.items()}
    print(f"SSD300 training step, batch {args.batch_size}, {best['singleshot']['device']}, amp={args.amp}, "
          f"median of {args.steps} steps, best of {args.rounds} round(s)")  # fmt: skip
    print(
        f"{'':20s} {'s/step':>8s} {'fwd+loss':>9s} {'backward':>9s} {'update':>8s} {'img/s':>7s} "
        f"{'tv/ours':>8s}"
    )
    ours = best["singleshot"]["step"]
    for kind in KINDS:
        r = best[kind]
        ratio = r["step"] / ours
        print(f"{kind:20s} {r['step']:8.3f} {r['forward_loss']:9.3f} {r['backward']:9.3f} {r['update']:8.3f} "
              f"{args.batch_size / r['step']:7.2f} {ratio:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
