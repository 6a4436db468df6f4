"""Slow, obviously-correct reference implementations the tests compare against."""

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
