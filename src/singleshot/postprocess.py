"""From network outputs to detections: decode, per-class score threshold and top-k,
per-class NMS, and a cap across classes.

The selection work is vectorised over images and classes at once: the candidates of
every (image, class) pair are gathered in one flat list, the per-class top-k is a pair of
sorts and the cap across classes a rank within each image. Only the greedy NMS itself
runs group by group (see `grouped_nms`), and with a cap per image only on as many of an
image's best candidates as the cap needs (see `capped_grouped_nms`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from .boxes import decode

__all__ = ["detect", "grouped_nms", "capped_grouped_nms", "select_top_k_per_group", "rank_in_runs"]


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


def capped_grouped_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, images: Tensor, iou_threshold: float, cap: int
) -> Tensor:
    """`grouped_nms` followed by the best ``cap`` survivors of each image, computed on a prefix.

    Args:
        boxes: (N, 4) xyxy; scores: (N,); groups: (N,) int64 ids, equal ids adjacent;
        images: (N,) int64 image of each entry (a group lies within one image).
        cap: how many survivors to keep per image.

    Returns:
        (M,) int64 indices, ordered by image, then by descending score; at most ``cap``
        per image. The same indices as `grouped_nms` then a per-image cap.

    Whether a box survives NMS depends only on the better boxes of its own group, so an
    image's best ``cap`` survivors are already decided by a prefix of its candidates
    sorted by score. NMS runs on prefixes of growing length until each image has ``cap``
    survivors or no candidates left: with a few thousand candidates per image and a cap
    of 200, one round on 2 x cap candidates usually settles it.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    num_images = int(images.max()) + 1
    # Best first within each image; ties keep the input order, as `grouped_nms` does.
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(images[order], stable=True)]
    rank = rank_in_runs(images[order])
    available = torch.bincount(images, minlength=num_images)
    length = 2 * cap
    while True:
        prefix = order[rank < length]
        prefix = prefix[torch.argsort(groups[prefix], stable=True)]  # groups adjacent again
        kept = prefix[grouped_nms(boxes[prefix], scores[prefix], groups[prefix], iou_threshold)]
        kept = kept[torch.argsort(images[kept], stable=True)]
        survivors = torch.bincount(images[kept], minlength=num_images)
        if bool(((survivors >= cap) | (available <= length)).all()):
            return kept[rank_in_runs(images[kept]) < cap]
        length *= 4


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
    # (B, C-1, P): candidates come out grouped by (image, class), in prior order.
    foreground = scores[:, :, 1:].transpose(1, 2)
    image, cls, prior = (foreground > score_threshold).nonzero(as_tuple=True)
    candidate_scores = foreground[image, cls, prior]
    groups = image * (num_classes - 1) + cls
    if groups.numel() and int(torch.bincount(groups).max()) > pre_nms_top_k:
        keep = select_top_k_per_group(candidate_scores, groups, pre_nms_top_k)
        image, cls, prior = image[keep], cls[keep], prior[keep]
        candidate_scores, groups = candidate_scores[keep], groups[keep]
    # Decoding only the candidates: a trained model passes a few percent of the priors.
    candidate_boxes = decode(loc[image, prior], priors[prior], variances).float()
    if clip:
        candidate_boxes = candidate_boxes.clamp(0.0, 1.0)
    candidate_scores = candidate_scores.float()

    if max_detections is None:
        keep = grouped_nms(candidate_boxes, candidate_scores, groups, nms_threshold)
        # Regroup by image (stable, so each image's detections stay sorted by score).
        keep = keep[torch.argsort(image[keep], stable=True)]
    else:
        keep = capped_grouped_nms(
            candidate_boxes, candidate_scores, groups, image, nms_threshold, max_detections
        )

    counts = torch.bincount(image[keep], minlength=batch).tolist()
    out_boxes = candidate_boxes[keep].split(counts)
    out_scores = candidate_scores[keep].split(counts)
    out_labels = (cls[keep] + 1).split(counts)
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(out_boxes, out_scores, out_labels)]
