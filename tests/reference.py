"""Slow, obviously-correct reference implementations the tests compare against."""

import math

import torch

from singleshot.boxes import cxcywh_to_xyxy


def reference_match(truths, labels, priors, threshold=0.5, variances=(0.1, 0.2)):
    """ssd.pytorch's match, written out plainly with loops (labels already 1-based)."""
    pf = cxcywh_to_xyxy(priors)
    n, p = truths.shape[0], pf.shape[0]
    overlaps = torch.zeros(n, p)
    for i in range(n):
        for j in range(p):
            ix = (torch.minimum(truths[i, 2], pf[j, 2]) - torch.maximum(truths[i, 0], pf[j, 0])).clamp(min=0)
            iy = (torch.minimum(truths[i, 3], pf[j, 3]) - torch.maximum(truths[i, 1], pf[j, 1])).clamp(min=0)
            inter = ix * iy
            area_a = (truths[i, 2] - truths[i, 0]) * (truths[i, 3] - truths[i, 1])
            area_b = (pf[j, 2] - pf[j, 0]) * (pf[j, 3] - pf[j, 1])
            overlaps[i, j] = inter / (area_a + area_b - inter)
    best_prior = [int(torch.argmax(overlaps[i])) for i in range(n)]
    best_truth_overlap, best_truth = overlaps.max(0)
    for j in range(n):
        best_truth_overlap[best_prior[j]] = 2.0
    for j in range(n):
        best_truth[best_prior[j]] = j
    conf = labels[best_truth].clone()
    conf[best_truth_overlap < threshold] = 0
    matched = truths[best_truth]
    centre = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([centre, size], 1), conf


def reference_detect(loc, scores, priors, score_threshold, nms_threshold, top_k, max_detections, clip):
    """Per image, per class: threshold, top-k, NMS (torchvision.ops.nms); then a cap across classes."""
    from torchvision.ops import nms

    from singleshot.boxes import decode

    results = []
    for i in range(loc.shape[0]):
        boxes = decode(loc[i], priors)
        if clip:
            boxes = boxes.clamp(0, 1)
        found = []
        for c in range(1, scores.shape[2]):
            s = scores[i, :, c]
            idx = (s > score_threshold).nonzero().flatten()
            idx = idx[s[idx].argsort(descending=True)][:top_k]
            for k in nms(boxes[idx], s[idx], nms_threshold).tolist():
                found.append((s[idx[k]].item(), c, boxes[idx[k]].tolist()))
        found.sort(key=lambda d: -d[0])
        if max_detections is not None:
            found = found[:max_detections]
        results.append(found)
    return results


def caffe_prior_boxes(image_size, feature_maps, steps, min_sizes, max_sizes, aspect_ratios, offset=0.5):
    """Caffe SSD's PriorBoxLayer::Forward_cpu (flip on, clip off, one min and max size per
    level), transcribed loop for loop in float64.

    Returns, per level, the list of its boxes [xmin, ymin, xmax, ymax] as fractions of the
    image, in Caffe's order: row, column, then min box, sqrt(min * max) box, each ratio r
    followed by its flip 1 / r.
    """
    levels = []
    for layer, size in enumerate(feature_maps):
        ratios = [1.0]  # PriorBoxLayer::LayerSetUp: 1, then each new r and (flip) 1 / r
        for ar in aspect_ratios[layer]:
            if all(abs(ar - seen) >= 1e-6 for seen in ratios):
                ratios.append(ar)
                ratios.append(1.0 / ar)
        step = steps[layer]
        boxes = []
        for h in range(size):
            for w in range(size):
                center_x = (w + offset) * step
                center_y = (h + offset) * step
                min_size = min_sizes[layer]
                sides = [(min_size, min_size)]
                side = math.sqrt(min_size * max_sizes[layer])
                sides.append((side, side))
                for ar in ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    sides.append((min_size * math.sqrt(ar), min_size / math.sqrt(ar)))
                for box_width, box_height in sides:
                    boxes.append(
                        [
                            (center_x - box_width / 2.0) / image_size,
                            (center_y - box_height / 2.0) / image_size,
                            (center_x + box_width / 2.0) / image_size,
                            (center_y + box_height / 2.0) / image_size,
                        ]
                    )
        levels.append(boxes)
    return levels


# Caffe SSD's PriorBox parameters, as its model scripts (ssd_pascal.py, ssd_coco.py, their 512
# versions) write them: feature maps, steps, min sizes, max sizes, aspect ratios per level.
CAFFE_PRIOR_PARAMETERS = {
    "ssd300_voc": (300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300],
                   [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315],
                   [[2], [2, 3], [2, 3], [2, 3], [2], [2]]),
    "ssd300_coco": (300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300],
                    [21, 45, 99, 153, 207, 261], [45, 99, 153, 207, 261, 315],
                    [[2], [2, 3], [2, 3], [2, 3], [2], [2]]),
    "ssd512_voc": (512, [64, 32, 16, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256, 512],
                   [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
                   [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
                   [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]),
    "ssd512_coco": (512, [64, 32, 16, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256, 512],
                    [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8],
                    [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72],
                    [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]),
}  # fmt: skip


def caffe_count_outside(name, margin=1e-9):
    """Per level, how many of Caffe's unclipped boxes reach outside the image, counted one by
    one; asserts that no corner lies within ``margin`` of an edge (where rounding could decide)."""
    counts = []
    for boxes in caffe_prior_boxes(*CAFFE_PRIOR_PARAMETERS[name]):
        count = 0
        for box in boxes:
            for v in box:
                assert abs(v) > margin and abs(v - 1.0) > margin, (name, box)
            if box[0] < 0 or box[1] < 0 or box[2] > 1 or box[3] > 1:
                count += 1
        counts.append(count)
    return counts
