"""Core speed against torchvision's SSD300, measured in one process with the same weights.

    .venv/bin/python benchmarks/bench_core.py [--repeats 5] [--threads 2] [--quick]

Four measurements, each the median of ``--repeats`` runs after a warm-up, printed as
milliseconds and as a ratio (torchvision time / singleshot time, > 1 = we are faster):

1. network forward at batch 1 and 8 (300x300): ``model(x)`` vs ``head(backbone(x))``;
2. loss, forward + backward, batch 32 with 1-6 boxes per image: matching, mining and both
   terms (`MultiBoxLoss`) vs torchvision's per-image matching loop + ``compute_loss``;
3. detection post-processing at batch 8 on trained-like scores (a few hundred candidates
   per class): softmax + `detect` vs ``postprocess_detections``;
4. end-to-end ``predict`` on 1 and on 8 uint8 images of 500x375 vs ``model(images)``.

torchvision's model is ``ssd300_vgg16(num_classes=21)``; ours is ``ssd300_coco`` with 21
classes and ``prior_clip="size"`` (torchvision's default boxes) loaded with its converted
weights, so both compute the same detections. The confidence head's background bias is
raised so the network's scores look like a trained model's (few candidates per class);
random weights would push ~100k scores through NMS and measure nothing useful.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.ops import box_iou

from peers import NUM_CLASSES, build_models, random_targets
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.loss import MultiBoxLoss
from singleshot.postprocess import detect
from singleshot.runtime import tune_malloc


def compare(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of each function, timed alternately so that load from other
    processes falls on both alike."""
    ours(), theirs()  # warm-up
    times_ours, times_theirs = [], []
    for _ in range(repeats):
        for fn, times in ((ours, times_ours), (theirs, times_theirs)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_ours), statistics.median(times_theirs)


def trained_like_logits(batch: int, num_priors: int, generator: torch.Generator) -> torch.Tensor:
    """Background logit 0, class logits -9 except ~300 priors per class in [-4, 2] (scores 0.02-0.85)."""
    logits = torch.full((batch, num_priors, NUM_CLASSES), -9.0)
    logits[..., 0] = 0.0
    for c in range(1, NUM_CLASSES):
        chosen = torch.randint(0, num_priors, (batch, 300), generator=generator)
        values = -4 + 6 * torch.rand(batch, 300, generator=generator)
        logits[..., c].scatter_(1, chosen, values)
    return logits


def bench_forward(tv, ours, repeats, report):
    for batch in (1, 8):
        x = 50 * torch.randn(batch, 3, 300, 300)
        with torch.inference_mode():
            t_ours, t_tv = compare(
                lambda x=x: ours(x), lambda x=x: tv.head(list(tv.backbone(x).values())), repeats
            )
        report(f"network forward, batch {batch}", t_ours / batch, t_tv / batch, "ms/image")


def bench_loss(tv, ours, repeats, report):
    g = torch.Generator().manual_seed(1)
    batch = 32
    targets = random_targets(batch, g)
    num_priors = ours.priors.shape[0]
    loc = torch.randn(batch, num_priors, 4, generator=g).requires_grad_(True)
    conf = torch.randn(batch, num_priors, NUM_CLASSES, generator=g).requires_grad_(True)
    criterion = MultiBoxLoss(NUM_CLASSES)
    priors = ours.priors

    def ours_step():
        loss_l, loss_c = criterion(loc, conf, priors, targets)
        (loss_l + loss_c).backward()

    anchors = [cxcywh_to_xyxy(priors) * 300] * batch
    tv_targets = [{"boxes": t["boxes"] * 300, "labels": t["labels"]} for t in targets]

    def tv_step():
        matched = [tv.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(tv_targets, anchors)]
        losses = tv.compute_loss(tv_targets, {"bbox_regression": loc, "cls_logits": conf}, anchors, matched)
        (losses["bbox_regression"] + losses["classification"]).backward()

    report("loss fwd+bwd, batch 32", *compare(ours_step, tv_step, repeats), "ms")


def bench_postprocess(tv, ours, repeats, report):
    g = torch.Generator().manual_seed(2)
    batch, num_priors = 8, ours.priors.shape[0]
    logits = trained_like_logits(batch, num_priors, g)
    loc = 0.5 * torch.randn(batch, num_priors, 4, generator=g)
    candidates = (logits.softmax(-1)[..., 1:] > 0.01).sum().item() / (batch * (NUM_CLASSES - 1))
    anchors = [cxcywh_to_xyxy(ours.priors) * 300] * batch
    sizes = [(300, 300)] * batch

    def ours_post():
        return detect(loc, logits.softmax(-1), ours.priors, 0.01, 0.45, 400, 200, clip=True)

    def tv_post():
        return tv.postprocess_detections({"bbox_regression": loc, "cls_logits": logits}, anchors, sizes)

    # Same detections up to float rounding: decoding in fractions (ours) or pixels (theirs)
    # can flip an NMS decision whose IoU lies within 1e-7 of the threshold.
    same = sum(
        len({(int(l), round(float(s), 6)) for l, s in zip(x["labels"], x["scores"])}
            & {(int(l), round(float(s), 6)) for l, s in zip(y["labels"], y["scores"])})
        for x, y in zip(ours_post(), tv_post())
    )  # fmt: skip
    total = sum(len(y["labels"]) for y in tv_post())
    print(f"  post-processing agreement with torchvision: {same}/{total} detections identical")
    label = f"post-processing, batch 8 (~{candidates:.0f} candidates/class)"
    report(label, *compare(ours_post, tv_post, repeats), "ms")


def bench_predict(tv, ours, repeats, report):
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=g) for _ in range(8)]
    for batch in (1, 8):
        chosen = images[:batch]
        with torch.inference_mode():
            t_ours, t_tv = compare(
                lambda chosen=chosen: ours.predict(chosen),
                lambda chosen=chosen: tv([im.float() / 255 for im in chosen]),
                repeats,
            )
        report(f"predict 500x375 uint8, batch {batch}", t_ours / batch, t_tv / batch, "ms/image")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="skip the slow network and predict parts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    tv, ours = build_models()
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(f"{'measurement':<52} {'singleshot':>12} {'torchvision':>12} {'ratio':>7}")

    def report(label, t_ours, t_tv, unit):
        print(f"{label:<52} {t_ours * 1e3:>9.1f} ms {t_tv * 1e3:>9.1f} ms {t_tv / t_ours:>6.2f}x  ({unit})")

    bench_loss(tv, ours, args.repeats, report)
    bench_postprocess(tv, ours, args.repeats, report)
    if not args.quick:
        bench_forward(tv, ours, args.repeats, report)
        bench_predict(tv, ours, args.repeats, report)


if __name__ == "__main__":
    main()
