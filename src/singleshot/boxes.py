"""Box geometry, matching and encoding: the paper's section 2.2 ("Matching strategy")
and the (0.1, 0.2) variance encoding of the Caffe SSD code.

Box forms used throughout:

- ``xyxy``: (x1, y1, x2, y2) corners.
- ``cxcywh``: (cx, cy, w, h) centre and size; priors (default boxes) use this form.

All functions work on fractions of the image (in ``[0, 1]`` for boxes inside it) but
nothing here assumes a unit; only the matching threshold is unit-free anyway.

The matching rule is written by hand (not with torchvision's ``Matcher``) because it
must reproduce ssd.pytorch's ``match`` bit for bit: float32 IoU computed as
``inter / (area_a + area_b - inter)``, first index on exact ties, a later ground
truth winning a prior that is the best for several, and IoU equal to the threshold
counted as positive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = [
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "fractions_to_pixels",
    "iou",
    "encode",
    "decode",
    "match",
    "match_batch",
    "match_indices",
    "pad_targets",
    "host_reads_are_free",
    "check_boxes",
    "invalid_boxes",
]

# Largest log-size offset accepted by `decode` (torchvision's bbox_xform_clip): a wild
# prediction then gives a box 62.5x its prior instead of overflowing to inf.
LOG_SIZE_CLAMP = math.log(1000.0 / 16)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy: (cx - w/2, cy - h/2, cx + w/2, cy + h/2)."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((low + high) / 2, high - low), dim=-1)


def fractions_to_pixels(boxes: Tensor, height: int, width: int, clip: bool = True) -> Tensor:
    """Boxes as fractions of an image -> the same boxes in that image's pixels.

    Args:
        boxes: (n, 4) xyxy, fractions of the image.
        height, width: the image's size in pixels.
        clip: clamp x to [0, width] and y to [0, height].

    Returns:
        A new (n, 4) xyxy tensor in pixels, on ``boxes``' device and in its dtype.
    """
    pixels = boxes * boxes.new_tensor([width, height, width, height])
    if clip:
        pixels[:, 0::2] = pixels[:, 0::2].clamp(0, width)
        pixels[:, 1::2] = pixels[:, 1::2].clamp(0, height)
    return pixels


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box in ``a`` with every box in ``b``.

    Args:
        a: (..., n, 4) xyxy.
        b: (..., m, 4) xyxy; leading dimensions broadcast with ``a``'s.

    Returns:
        (..., n, m) IoU, computed as ``inter / (area_a + area_b - inter)`` in the
        inputs' dtype (the exact expression of ssd.pytorch's ``jaccard``).
    """
    # Coordinates as separate planes (b's made contiguous): several times faster than
    # broadcasting (..., n, m, 2) pairs, and the same float operations in the same order.
    bx1, by1, bx2, by2 = (c[..., None, :] for c in b.movedim(-1, 0).contiguous())
    ax1, ay1, ax2, ay2 = (a[..., i, None] for i in range(4))
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
        h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
        inter = w * h
        return inter / (area_a + area_b - inter)
    # Without autograd the (n, m) planes are updated in place: the same operations, ~1.5x
    # faster on large n x m because fewer fresh buffers pass through the cache.
    w = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    h = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    inter = w.mul_(h)
    union = (area_a + area_b).sub_(inter)
    return inter.div_(union)


def encode(matched: Tensor, priors: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """Encode ground-truth boxes as offsets from their priors (what ``loc`` learns).

    Args:
        matched: (..., P, 4) xyxy, the ground truth matched to each prior.
        priors: (P, 4) cxcywh.
        variances: scale of the centre and of the log-size offsets.

    Returns:
        (..., P, 4): ``((gx - px) / (v0 * pw), (gy - py) / (v0 * ph), log(gw / pw) / v1, log(gh / ph) / v1)``.
    """
    centre = (matched[..., :2] + matched[..., 2:]) / 2 - priors[:, :2]
    centre = centre / (variances[0] * priors[:, 2:])
    size = (matched[..., 2:] - matched[..., :2]) / priors[:, 2:]
    size = torch.log(size) / variances[1]
    return torch.cat((centre, size), dim=-1)


def decode(
    loc: Tensor,
    priors: Tensor,
    variances: tuple[float, float] = (0.1, 0.2),
    log_size_clamp: float = LOG_SIZE_CLAMP,
) -> Tensor:
    """Invert `encode`: offsets predicted for each prior -> boxes.

    Args:
        loc: (..., P, 4) encoded offsets.
        priors: (P, 4) cxcywh.
        log_size_clamp: upper bound of the log-size offset (``log(1000 / 16)``, as
            torchvision), so that no prediction decodes to an infinite box.

    Returns:
        (..., P, 4) xyxy in the priors' unit.
    """
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp((loc[..., 2:] * variances[1]).clamp(max=log_size_clamp))
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def invalid_boxes(boxes: Tensor) -> Tensor:
    """(n, 4) xyxy -> (n,) bool: not finite, or zero or negative width or height."""
    return ~torch.isfinite(boxes).all(-1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


def check_boxes(boxes: Tensor, what: str = "box") -> None:
    """Raise ValueError naming the first (n, 4) xyxy box that `invalid_boxes` flags."""
    if boxes.numel() == 0:
        return
    bad = invalid_boxes(boxes)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what} {index} is degenerate: {boxes[index].tolist()} "
            "(boxes must be finite xyxy with x2 > x1 and y2 > y1)"
        )


def host_reads_are_free(tensor: Tensor) -> bool:
    """Whether reading ``tensor``'s values on the host costs only the read: on the CPU it
    does; on a GPU each read (``.item()``, ``bool()``, a shape set by ``nonzero``) waits
    for all the work queued before it (a host sync). The matching and the loss take
    forms that read where reads are free and forms without reads elsewhere."""
    return tensor.device.type == "cpu"


def pad_targets(
    gt_boxes: list[Tensor], gt_labels: list[Tensor], device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a batch's ground truth and pad it to one tensor.

    Args:
        gt_boxes: B tensors (n_i, 4) xyxy; n_i may be 0.
        gt_labels: B tensors (n_i,) int64.
        device: where the padded tensors go (None: where the inputs are).

    Returns:
        ``boxes`` float32 (B, n, 4) with n = max n_i (padding rows lie far outside the
        image, so they overlap nothing), ``labels`` int64 (B, n) (0 on padding) and
        ``valid`` bool (B, n).

    The checks and the padding run where the inputs are, and only the three padded
    tensors move to ``device``: ground truth kept in host memory (as the trainer keeps
    it) is checked without waiting for the GPU, and moved without a blocking copy.

    Raises:
        ValueError: a box is not finite or has zero or negative width or height; the
            message names the image index and the box.
    """
    counts = [len(b) for b in gt_boxes]
    if len(gt_labels) != len(gt_boxes) or any(len(lab) != n for lab, n in zip(gt_labels, counts)):
        raise ValueError("every image needs as many labels as boxes")
    if sum(counts) and bool(invalid_boxes(torch.cat(gt_boxes)).any()):
        for image, boxes in enumerate(gt_boxes):  # only to name the culprit
            try:
                check_boxes(boxes, what="ground-truth box")
            except ValueError as error:
                raise ValueError(f"image {image} of the batch: {error}") from None
    batch, most = len(gt_boxes), max(counts, default=0)
    if most == 0:
        return (
            torch.zeros(batch, 0, 4, device=device),
            torch.zeros(batch, 0, dtype=torch.int64, device=device),
            torch.zeros(batch, 0, dtype=torch.bool, device=device),
        )
    sources = {t.device for t in (*gt_boxes, *gt_labels)}
    source = sources.pop() if len(sources) == 1 else device
    boxes = pad_sequence(
        [b.to(device=source, dtype=torch.float32) for b in gt_boxes], batch_first=True, padding_value=-2.0
    )  # padding: the zero-area box (-2, -2, -2, -2)
    labels = pad_sequence([lab.to(device=source, dtype=torch.int64) for lab in gt_labels], batch_first=True)
    valid = torch.arange(most) < torch.tensor(counts)[:, None]
    return _moved(boxes, device), _moved(labels, device), _moved(valid, device)


def _moved(tensor: Tensor, device: torch.device | None) -> Tensor:
    """``tensor`` on ``device``; from host memory to a GPU through page-locked memory, so that
    the copy is queued behind the GPU's work instead of waiting for it."""
    if device is None or tensor.device == torch.device(device):
        return tensor
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def match_indices(
    boxes: Tensor, valid: Tensor, priors_xyxy: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """The matching rule on padded ground truth (see `pad_targets`).

    Args:
        boxes: (B, n, 4) xyxy; valid: (B, n) bool; priors_xyxy: (P, 4) the priors' corner form.

    Returns:
        ``best_truth`` int64 (B, P): index of the ground truth each prior is matched to
        (meaningful where ``positive``), and ``positive`` bool (B, P).
    """
    batch, most = valid.shape
    num_priors = priors_xyxy.shape[0]
    if most == 0:
        zeros = torch.zeros(batch, num_priors, dtype=torch.int64, device=priors_xyxy.device)
        return zeros, zeros.bool()
    overlaps, truth_index, best_prior_at = _overlaps(boxes, valid, priors_xyxy)
    best_truth_overlap, best_truth = overlaps.max(dim=1)  # (B, P), first ground truth on ties

    # Each ground truth keeps its best prior; when several share one, the last wins
    # (ssd.pytorch assigns them in a loop over j).
    forced = torch.full((batch * num_priors,), -1, dtype=torch.int64, device=boxes.device)
    forced.scatter_reduce_(0, best_prior_at, truth_index, reduce="amax")
    forced = forced.view(batch, num_priors)
    is_forced = forced >= 0
    best_truth = torch.where(is_forced, forced, best_truth)
    positive = is_forced | (best_truth_overlap >= iou_threshold)
    return best_truth, positive


def _overlaps(boxes: Tensor, valid: Tensor, priors_xyxy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IoU laid out per image, (B, n, P), zero on the padding rows; and, per ground-truth
    row, its index and the flat position (image * P + prior) of its best prior (first on ties).

    A zero row never beats a real row's IoU on ties (first index wins), and an image without
    objects has best overlap 0 everywhere. On the CPU only the real rows are computed (their
    positions are read on the host); elsewhere every row is, the padding masked, so that no
    shape depends on the data (no wait for the GPU), padding rows taking part as -1, which
    changes no maximum. Each IoU is the same float expression either way.
    """
    batch, most = valid.shape
    num_priors = priors_xyxy.shape[0]
    if host_reads_are_free(boxes):
        image, truth = valid.nonzero(as_tuple=True)  # (N,), (N,)
        real = iou(boxes[image, truth], priors_xyxy)  # (N, P)
        overlaps = real.new_zeros(batch, most, num_priors)
        overlaps[image, truth] = real
        return overlaps, truth, image * num_priors + real.argmax(dim=1)
    overlaps = iou(boxes, priors_xyxy).masked_fill_(~valid[:, :, None], 0.0)
    truth = torch.where(valid, torch.arange(most, device=boxes.device), -1)
    image = torch.arange(batch, device=boxes.device)[:, None]
    return overlaps, truth.flatten(), (image * num_priors + overlaps.argmax(dim=2)).flatten()


def match_batch(
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    priors: Tensor,
    iou_threshold: float = 0.5,
    variances: tuple[float, float] = (0.1, 0.2),
) -> tuple[Tensor, Tensor]:
    """Match the ground truth of a whole batch to the priors at once (no loop over priors).

    Args:
        gt_boxes: B tensors (n_i, 4) xyxy as fractions of the image; n_i may be 0.
        gt_labels: B tensors (n_i,) int64 in 1..C-1.
        priors: (P, 4) cxcywh.

    Returns:
        ``loc_t`` (B, P, 4) encoded offsets of each prior's matched ground truth and
        ``labels_t`` (B, P) int64, 0 for background. Background priors' ``loc_t`` rows hold
        the offsets of their best-overlapping ground truth (zeros in images without
        objects); no loss term reads them.

    Raises:
        ValueError: a ground-truth box is not finite or has zero or negative width or
            height; the message names the image index and the box.
    """
    boxes, labels, valid = pad_targets(gt_boxes, gt_labels, priors.device)
    priors_xyxy = cxcywh_to_xyxy(priors)
    best_truth, positive = match_indices(boxes, valid, priors_xyxy, iou_threshold)
    if boxes.shape[1] == 0:
        return torch.zeros_like(priors).expand(len(gt_boxes), -1, -1).clone(), best_truth
    matched = boxes.gather(1, best_truth[:, :, None].expand(-1, -1, 4))  # (B, P, 4)
    # As ssd.pytorch, background priors encode their best ground truth too; in images
    # without objects (which it cannot take) they encode themselves.
    matched = torch.where(valid.any(1)[:, None, None], matched, priors_xyxy.to(matched.dtype))
    labels_t = torch.where(positive, labels.gather(1, best_truth), 0)
    return encode(matched, priors, variances), labels_t


def match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    iou_threshold: float = 0.5,
    variances: tuple[float, float] = (0.1, 0.2),
) -> tuple[Tensor, Tensor]:
    """Match one image's ground truth to the priors (the paper's matching strategy).

    Every ground truth keeps the prior it overlaps best, even below the threshold;
    every other prior takes the ground truth it overlaps best when that IoU is
    ``>= iou_threshold``, and is background otherwise.

    Args:
        gt_boxes: (n, 4) xyxy as fractions of the image.
        gt_labels: (n,) int64 in 1..C-1.
        priors: (P, 4) cxcywh.

    Returns:
        ``loc_t`` (P, 4) encoded offsets (see `encode`) and ``labels_t`` (P,) int64 with
        0 for background.
    """
    loc_t, labels_t = match_batch([gt_boxes], [gt_labels], priors, iou_threshold, variances)
    return loc_t[0], labels_t[0]
