"""The whole detector as one graph: network, decoding and NMS, with static output shapes.

`singleshot.postprocess.detect` gathers a data-dependent list of candidates; an exported
graph wants fixed shapes instead. `DetectorGraph` computes the same detections as
``detect`` in an export-friendly way:

1. decode every prior's box (B, P, 4) (`PriorDecoder`) and take the softmax scores per
   class (B, C-1, P);
2. zero the scores at or below the threshold, then per image and class keep the
   ``pre_nms_top_k`` best (TopK), k of them: the top-k of the scores above the threshold,
   as ``detect`` takes them, with zeros where a class has fewer;
3. NMS per image and class with a score threshold (`surviving_scores`: ONNX's
   NonMaxSuppression does exactly this), each (image, class) its own batch entry of its k
   candidates' boxes (B * (C-1), k, 4) and scores (B * (C-1), 1, k); the survivors keep their
   scores, the rest become zeros;
4. take each image's ``max_detections`` best of its (C-1) * k candidates (TopK): the
   non-zero ones are its detections.

Outputs: ``boxes`` (B, K, 4) xyxy as fractions of the network input, ``scores`` (B, K),
``labels`` int64 (B, K) in 1..C-1, ``counts`` int64 (B,): image b's detections are the
first ``counts[b]`` rows, sorted by score, descending; the rest is zero padding.

Candidates tied in score exactly at a top-k cut may be chosen differently from ``detect``
(which keeps the lower prior index), and detections tied exactly in score may come in
another order; with real-valued scores this does not happen in practice.

ONNX Runtime spends a few microseconds on every node whatever its size, and more on
slicing or broadcasting along a last axis of 4 or 7 elements; for the small models the
post-processing is a sizeable part of a run (a quarter of the int8 demo model's), so the
graph is written in whole-tensor operations with few nodes (benchmarks/README.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from ..boxes import LOG_SIZE_CLAMP, fractions_to_pixels
from ..postprocess import class_probabilities

__all__ = [
    "DetectorGraph",
    "ForegroundScores",
    "ForegroundScoresByProducts",
    "PriorDecoder",
    "TorchNMS",
    "gather_rows",
    "multiclass_nms",
    "surviving_scores",
]


def multiclass_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """NMS per image and class, as ONNX NonMaxSuppression (without a per-class cap).

    Args:
        boxes: (B, P, 4) xyxy, shared by all classes.
        scores: (B, C, P); only scores strictly above ``score_threshold`` are candidates.
        iou_threshold: a box whose IoU with a better one of its image and class is above
            this is removed.

    Returns:
        (M, 3) int64 rows [image, class, prior] of the kept boxes.
    """
    candidates = (scores > score_threshold).nonzero()
    image, cls, prior = candidates[:, 0], candidates[:, 1], candidates[:, 2]
    keep = batched_nms(
        boxes[image, prior], scores[image, cls, prior], image * scores.shape[1] + cls, iou_threshold
    )
    return candidates[keep]


def surviving_scores(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """The scores of the boxes NMS keeps per image and class (`multiclass_nms`), zero elsewhere.

    Args:
        boxes: (B, P, 4) xyxy, shared by all classes.
        scores: (B, C, P), >= 0; only scores strictly above ``score_threshold`` are candidates.

    Returns:
        (B, C, P): ``scores`` where the box survives, 0 elsewhere; so every non-zero entry
        is a detection.
    """
    image, cls, prior = multiclass_nms(boxes, scores, iou_threshold, score_threshold).unbind(1)
    table = torch.zeros_like(scores)
    table[image, cls, prior] = scores[image, cls, prior]
    return table


class TorchNMS(nn.Module):
    """`surviving_scores` as a module (eager PyTorch and TorchScript; needs only torchvision)."""

    def __init__(self, iou_threshold: float, score_threshold: float) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)

    def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
        return surviving_scores(boxes, scores, self.iou_threshold, self.score_threshold)


class PriorDecoder(nn.Module):
    """`singleshot.boxes.decode` for fixed priors, bit for bit, in whole-tensor operations.

    Per prior (cx, cy, w, h) and offsets (dx, dy, dw, dh), variances (v0, v1):

        centre = (cx, cy, cx, cy) + (dx, dy, dx, dy) * v0 * (w, h, w, h)
        box    = centre + exp(min((dw, dh, dw, dh) * v1, clamp)) * (-w/2, -h/2, w/2, h/2)

    The repeated offsets come from two constant 0/1 (4, 4) products, which copy each
    finite value exactly, and every product and sum rounds as in ``decode`` (halving is
    exact), so the boxes are ``decode``'s. ``decode`` slices the last axis into pairs and
    concatenates them again, four nodes that ONNX Runtime runs element by element.

    forward: loc (B, P, 4) offsets -> (B, P, 4) xyxy in the priors' unit.
    """

    if TYPE_CHECKING:
        centres: Tensor
        sizes: Tensor
        half_sizes: Tensor
        pick_shift: Tensor
        pick_log_size: Tensor

    def __init__(self, priors: Tensor, variances: tuple[float, float], log_size_clamp: float) -> None:
        super().__init__()
        priors = priors.detach().float()  # every constant on the priors' device
        signs = torch.tensor([-0.5, -0.5, 0.5, 0.5], device=priors.device)
        self.register_buffer("centres", priors[:, [0, 1, 0, 1]].clone())  # (P, 4)
        self.register_buffer("sizes", priors[:, [2, 3, 2, 3]].clone())  # (P, 4)
        self.register_buffer("half_sizes", self.sizes * signs)
        eye = torch.eye(4, device=priors.device)
        # loc @ pick: (dx, dy, dw, dh) -> (dx, dy, dx, dy) and (dw, dh, dw, dh)
        self.register_buffer("pick_shift", eye[:, [0, 1, 0, 1]].clone())
        self.register_buffer("pick_log_size", eye[:, [2, 3, 2, 3]].clone())
        self.variances = (float(variances[0]), float(variances[1]))
        self.log_size_clamp = float(log_size_clamp)

    def forward(self, loc: Tensor) -> Tensor:
        centres = self.centres + (loc @ self.pick_shift) * self.variances[0] * self.sizes
        log_sizes = ((loc @ self.pick_log_size) * self.variances[1]).clamp(max=self.log_size_clamp)
        return centres + torch.exp(log_sizes) * self.half_sizes


class ForegroundScores(nn.Module):
    """The foreground classes' softmax scores by `singleshot.postprocess.class_probabilities`,
    as `predict` takes them for ``detect``: bit for bit the same.

    forward: conf (B, P, C) logits -> (B, C-1, P) scores, class by class.
    """

    def forward(self, conf: Tensor) -> Tensor:
        return class_probabilities(conf).transpose(1, 2)[:, 1:]


class ForegroundScoresByProducts(nn.Module):
    """The foreground classes' softmax scores written for ONNX Runtime, which the ONNX
    export uses.

    The same softmax, exp(x - max) / sum over the C classes of each prior, but each prior's
    max is spread over its C logits, and the exponentials summed over the classes, by matrix
    products with a row of ones: ONNX Runtime's Softmax works prior by prior on rows of C
    values, and broadcasts along a last axis of C values element by element, both slowly
    (on one thread the demo model's post-processing took 0.29-0.42 ms with ONNX's Softmax,
    0.24-0.36 ms with the products; benchmarks/bench_postprocess.py). The max is subtracted
    first, so no exponential overflows and the sum is at least 1. The scores differ from
    `ForegroundScores`' in the last bits only.

    forward: conf (B, P, C) logits -> (B, C-1, P) scores, class by class.
    """

    def forward(self, conf: Tensor) -> Tensor:
        ones = torch.ones(1, conf.shape[-1], dtype=conf.dtype, device=conf.device)
        spread = conf.amax(dim=-1, keepdim=True) @ ones  # (B, P, C): each prior's max, C times
        exps = (conf - spread).exp().transpose(1, 2)  # (B, C, P)
        return exps[:, 1:] / (ones @ exps)  # (B, C-1, P) over (B, 1, P)


class DetectorGraph(nn.Module):
    """Normalised images in, final detections out (see the module docstring).

    Args:
        network: maps x float (B, 3, S, S) (RGB 0-255 minus the image mean) to ``loc``
            (B, P, 4) and ``conf`` (B, P, C) logits; an SSD, or a traced copy of one.
        priors: (P, 4) cxcywh as fractions of the image.
        nms: module (boxes (N, k, 4), scores (N, 1, k)) -> the survivors' scores in place,
            zeros elsewhere (N, 1, k), as `surviving_scores`, where N = B * (C-1) and k =
            min(pre_nms_top_k, P); None = `TorchNMS` with the thresholds below.
        scores: module conf (B, P, C) logits -> foreground scores (B, C-1, P);
            None = `ForegroundScores` (`predict`'s softmax bit for bit).
        score_threshold, nms_threshold, pre_nms_top_k, max_detections, clip, variances:
            as in `singleshot.postprocess.detect` (max_detections None = every survivor,
            i.e. K = (C-1) * pre_nms_top_k).

    forward: x (B, 3, S, S) -> boxes (B, K, 4), scores (B, K), labels int64 (B, K), counts int64 (B,).
    """

    if TYPE_CHECKING:
        candidate_labels: Tensor

    def __init__(
        self,
        network: nn.Module,
        priors: Tensor,
        num_classes: int,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        pre_nms_top_k: int = 200,
        max_detections: int | None = 200,
        clip: bool = False,
        variances: tuple[float, float] = (0.1, 0.2),
        nms: nn.Module | None = None,
        scores: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if pre_nms_top_k < 1 or (max_detections is not None and max_detections < 1):
            raise ValueError("pre_nms_top_k and max_detections must be >= 1")
        self.network = network
        self.decoder = PriorDecoder(priors, variances, LOG_SIZE_CLAMP)
        self.num_classes = int(num_classes)
        self.top_k = min(int(pre_nms_top_k), int(priors.shape[0]))
        cap = (self.num_classes - 1) * self.top_k
        self.max_out = cap if max_detections is None else min(int(max_detections), cap)
        self.clip = bool(clip)
        self.score_threshold = float(score_threshold)
        self.nms = nms if nms is not None else TorchNMS(nms_threshold, score_threshold)
        self.scores = scores if scores is not None else ForegroundScores()
        # the label of each of an image's (C-1) * k candidates, class by class: one gather
        # instead of an integer division, which exports as five nodes
        labels = torch.arange(cap, device=priors.device) // self.top_k + 1
        self.register_buffer("candidate_labels", labels, persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        loc, conf = self.network(x)
        return self.postprocess(loc.float(), conf.float())

    def postprocess(self, loc: Tensor, conf: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """loc (B, P, 4), conf (B, P, C) logits -> boxes, scores, labels, counts (see the class)."""
        boxes = self.decoder(loc)
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        scores = self.scores(conf)  # (B, C-1, P)
        # Scores at or below the threshold never become detections, so zero them before the
        # top-k: most rows then hold few non-zero scores, and ONNX Runtime's TopK (a heap)
        # rarely updates; NMS needs no order (benchmarks/README.md).
        passing = scores * (scores > self.score_threshold)
        top_scores, top_index = passing.topk(self.top_k, dim=2, sorted=False)  # (B, C-1, k)
        candidates = gather_rows(boxes, top_index.flatten(1))  # (B, (C-1) * k, 4)

        # NMS per image and class, each (image, class) its own batch entry of k candidates: the
        # survivors' table is (C-1) * k wide per image instead of (C-1) * P, so the final
        # top-k looks at the candidates only.
        k = self.top_k
        survivors = self.nms(candidates.reshape(-1, k, 4), top_scores.reshape(-1, 1, k))
        survivors = survivors.reshape(top_scores.shape[0], -1)  # (B, (C-1) * k)
        best, index = survivors.topk(self.max_out, dim=1)  # (B, K), sorted, descending

        valid = best > 0  # a survivor's score is above the threshold, so positive
        out_boxes = torch.where(valid.unsqueeze(-1), gather_rows(candidates, index), 0.0)
        out_labels = torch.where(valid, self.candidate_labels[index], 0)
        return out_boxes, best, out_labels, valid.sum(dim=1)


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[b, index[b, n]]`` for every b and n: (B, N, D) rows of a (B, R, D) table.

    An embedding lookup in the (B * R, D) table: one ONNX ``Gather`` of whole rows, where a
    ``gather`` along dimension 1 needs a (B, N, D) index and the ``Expand`` that makes it
    (ONNX Runtime spent longer on that than on the gather itself).
    """
    batch, rows, width = table.shape
    offsets = torch.arange(batch, device=index.device).unsqueeze(1) * rows  # (B, 1)
    return F.embedding(index + offsets, table.reshape(-1, width))


def outputs_to_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    counts: Tensor,
    image_sizes: list[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """Padded graph outputs -> one dict per image, boxes in pixels when ``image_sizes`` are given.

    Args:
        boxes, scores, labels, counts: `DetectorGraph` outputs (tensors or numpy arrays).
        image_sizes: (height, width) of each original image; boxes are scaled to it and
            clipped to it, as `singleshot.SSD.predict` does. None keeps fractions.

    Returns:
        A list of ``{"boxes" (N, 4) xyxy, "scores" (N,), "labels" int64 (N,)}``.
    """
    boxes, scores, labels, counts = (torch.as_tensor(t) for t in (boxes, scores, labels, counts))
    results = []
    for b in range(boxes.shape[0]):
        n = int(counts[b])
        det_boxes = boxes[b, :n].float()
        if image_sizes is not None:
            height, width = image_sizes[b]
            det_boxes = fractions_to_pixels(det_boxes, height, width)
        results.append({"boxes": det_boxes, "scores": scores[b, :n].float(), "labels": labels[b, :n].long()})
    return results
