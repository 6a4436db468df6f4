"""From network outputs to detections: decode, per-class score threshold and top-k,
per-class NMS, and a cap across classes.

The selection work is vectorised over images and classes at once: the candidates of
every (image, class) pair are gathered in one flat list, the per-class top-k is a pair of
sorts and the cap across classes a rank within each image. Only the greedy NMS itself
runs group by group (see `grouped_nms`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from .boxes import decode

__all__ = ["detect", "grouped_nms", "select_top_k_per_group", "rank_in_runs"]


def rank_in_runs(groups: Tensor) -> Tensor:
    """(N,) ids where equal ids are adjacent -> (N,) position of each entry within its run."""
    is_first = torch.ones_like(groups, dtype=torch.bool)
    is_first[1:] = groups[1:] != groups[:-1]
    positions = torch.arange(len(groups), device=groups.device)
    return positions - torch.cummax(torch.where(is_first, positions, 0), dim=0).values


def select_top_k_per_group(scores: Tensor, groups: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` best scores within each group.

    Args:
        scores: (N,) float.
        groups: (N,) int64 group ids.
        k: how many to keep per group.

    Returns:
        (M,) int64 indices into ``scores``, ordered by group, then by descending score.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    return order[rank_in_runs(groups[order]) < k]


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each group; boxes of different groups never suppress each other.

    Args:
        boxes: (N, 4) xyxy; scores: (N,); groups: (N,) int64 ids, equal ids adjacent
            (as `select_top_k_per_group` returns them).

    Returns:
        (M,) int64 indices of the kept boxes, sorted by descending score.

    On CUDA this is `torchvision.ops.batched_nms` (its coordinate-offset trick runs all
    groups in one parallel kernel). On the CPU that trick costs O(N x kept) IoUs across
    groups, and batched_nms's fallback scans all N ids for every group; calling the NMS
    kernel once per contiguous slice does only the work greedy NMS needs (measured 12x
    faster than batched_nms on 160 groups of ~290 boxes).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.is_cuda:
        return batched_nms(boxes, scores, groups, iou_threshold)
    sizes = torch.unique_consecutive(groups, return_counts=True)[1].tolist()
    kept, start = [], 0
    for size in sizes:
        kept.append(nms(boxes[start : start + size], scores[start : start + size], iou_threshold) + start)
        start += size
    keep = torch.cat(kept)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def detect(
    loc: Tensor,
    scores: Tensor,
    priors: Tensor,
    score_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    pre_nms_top_k: int = 200,
    max_detections: int | None = 200,
    variances: tuple[float, float] = (0.1, 0.2),
    clip: bool = False,
) -> list[dict[str, Tensor]]:
    """Turn network outputs into per-image detections.

    Args:
        loc: (B, P, 4) encoded offsets.
        scores: (B, P, C) class probabilities (softmax of ``conf``); column 0 is background.
        priors: (P, 4) cxcywh.
        score_threshold: per class, keep scores strictly above this.
        nms_threshold: NMS removes a box whose IoU with a better one of its class is above this.
        pre_nms_top_k: per image and class, the best this many candidates enter NMS.
        max_detections: per image, the best this many after NMS across classes (None = all).
        clip: clip decoded boxes to [0, 1] before NMS (torchvision does; ssd.pytorch does not).

    Returns:
        B dicts: ``boxes`` (N, 4) xyxy as fractions of the image, ``scores`` (N,),
        ``labels`` int64 (N,) in 1..C-1, sorted by score, descending.
    """
    batch, num_priors, num_classes = scores.shape
    boxes = decode(loc, priors, variances)  # (B, P, 4)
    if clip:
        boxes = boxes.clamp(0.0, 1.0)

    foreground = scores[:, :, 1:]
    image, prior, cls = (foreground > score_threshold).nonzero(as_tuple=True)
    candidate_scores = foreground[image, prior, cls]
    groups = image * (num_classes - 1) + cls
    keep = select_top_k_per_group(candidate_scores, groups, pre_nms_top_k)
    image, prior, cls = image[keep], prior[keep], cls[keep]
    candidate_scores, groups = candidate_scores[keep], groups[keep]
    candidate_boxes = boxes[image, prior]

    # NMS within each (image, class); the result is sorted by descending score.
    keep = grouped_nms(candidate_boxes.float(), candidate_scores.float(), groups, nms_threshold)
    # Regroup by image (stable, so each image's detections stay sorted by score).
    keep = keep[torch.argsort(image[keep], stable=True)]
    if max_detections is not None and keep.numel():
        keep = keep[rank_in_runs(image[keep]) < max_detections]

    counts = torch.bincount(image[keep], minlength=batch).tolist()
    out_boxes = candidate_boxes[keep].split(counts)
    out_scores = candidate_scores[keep].split(counts)
    out_labels = (cls[keep] + 1).split(counts)
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(out_boxes, out_scores, out_labels)]
