"""Time `evaluate_voc` on a VOC-sized synthetic test set (default 5000 images x 20 classes).

The peer is the per-detection loop every PyTorch SSD port ships (py-faster-rcnn's
``voc_eval.py``, used by ssd.pytorch and lufficc/SSD), written out here on the same
data: for each class, detections in score order, each compared with its image's
ground truths in numpy. It is timed on a subset (``--peer-images``) because it is slow;
both are timed on that subset for the ratio, and ours also on the full set.

    python benchmarks/bench_eval.py [--images 5000] [--classes 20] [--detections 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from singleshot.evaluation import VOC07_RECALL_THRESHOLDS, evaluate_voc


def synthetic(num_images: int, num_classes: int, detections_per_image: int, seed: int = 0):
    """Ground truths like VOC07 test (~2.4 objects per image, 10% difficult) and detections
    like a trained SSD at score threshold 0.01: a few near the objects, the rest scattered."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 400, size=(n, 2))
        wh = rng.uniform(20, 200, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, num_classes + 1, size=n)
        gts.append({"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.1})
        m = detections_per_image
        near = rng.integers(0, n, size=m)
        on_object = rng.random(m) < 0.3
        base = np.where(on_object[:, None], boxes[near], rng.uniform(0, 500, size=(m, 4)))
        jitter = rng.normal(0, 8, size=(m, 4))
        dboxes = np.sort((base + jitter).reshape(m, 2, 2), axis=1).reshape(m, 4)
        dlabels = np.where(on_object, labels[near], rng.integers(1, num_classes + 1, size=m))
        scores = np.where(on_object, rng.uniform(0.2, 1.0, m), rng.uniform(0.01, 0.3, m))
        order = np.argsort(-scores)
        dets.append({"boxes": dboxes[order], "scores": scores[order], "labels": dlabels[order]})
    return dets, gts


def per_detection_loop(dets, gts, num_classes: int, threshold: float = 0.5) -> float:
    """The classic voc_eval.py structure (11-point AP), on inclusive boxes (x1 + 1, y1 + 1, x2, y2)."""
    aps = []
    for cls in range(1, num_classes + 1):
        records, npos = [], 0
        for g in gts:
            keep = g["labels"] == cls
            bb = g["boxes"][keep].copy()
            bb[:, :2] += 1
            records.append({"bb": bb, "diff": g["difficult"][keep], "det": np.zeros(keep.sum(), bool)})
            npos += int((~g["difficult"][keep]).sum())
        image_ids, confidence, boxes = [], [], []
        for i, d in enumerate(dets):
            keep = d["labels"] == cls
            image_ids.extend([i] * int(keep.sum()))
            confidence.append(d["scores"][keep])
            boxes.append(d["boxes"][keep])
        confidence = np.concatenate(confidence)
        boxes = np.concatenate(boxes)
        boxes[:, :2] += 1
        order = np.argsort(-confidence, kind="stable")
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for d, j in enumerate(order):
            r = records[image_ids[j]]
            bb = boxes[j]
            ovmax = -np.inf
            if r["bb"].size:
                g = r["bb"]
                iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1, 0)
                ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1, 0)
                inter = iw * ih
                union = (
                    (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                    + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)
                    - inter
                )
                overlaps = inter / union
                ovmax, jmax = overlaps.max(), overlaps.argmax()
            if ovmax >= threshold:
                if not r["diff"][jmax]:
                    if not r["det"][jmax]:
                        tp[d] = 1
                        r["det"][jmax] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / max(npos, 1)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in VOC07_RECALL_THRESHOLDS) / 11
        if npos:
            aps.append(ap)
    return float(np.mean(aps))


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=5000, help="test images (default 5000, VOC07 test has 4952)"
    )
    parser.add_argument("--classes", type=int, default=20, help="object classes (default 20)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--peer-images", type=int, default=500, help="images the slow peer loop is timed on")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is reported (default 5)")
    args = parser.parse_args()

    dets, gts = synthetic(args.images, args.classes, args.detections)
    total = sum(len(d["scores"]) for d in dets)
    ours_full = best_time(lambda: evaluate_voc(dets, gts, inclusive_boxes=False), args.repeat)
    print(
        f"evaluate_voc: {args.images} images x {args.classes} classes, {total} detections: {ours_full:.3f} s"
    )

    sub = min(args.peer_images, args.images)
    sub_dets, sub_gts = dets[:sub], gts[:sub]
    ours = evaluate_voc(sub_dets, sub_gts, inclusive_boxes=False)["map"]
    peer = per_detection_loop(sub_dets, sub_gts, args.classes)
    assert abs(ours - peer) < 1e-9, (ours, peer)
    ours_sub = best_time(lambda: evaluate_voc(sub_dets, sub_gts, inclusive_boxes=False), args.repeat)
    peer_sub = best_time(
        lambda: per_detection_loop(sub_dets, sub_gts, args.classes), max(1, args.repeat // 2)
    )
    print(
        f"on {sub} images: evaluate_voc {ours_sub * 1e3:.1f} ms, per-detection loop {peer_sub * 1e3:.1f} ms "
        f"-> {peer_sub / ours_sub:.1f}x faster (same mAP {ours:.6f})"
    )


if __name__ == "__main__":
    main()
