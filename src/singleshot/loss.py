"""The MultiBox loss with hard negative mining (paper section 2.2, "Training objective").

Localisation: smooth-L1 (beta 1) between predicted and encoded offsets, over positive
priors. Confidence: softmax cross-entropy over the positives and, per image, the
``neg_pos_ratio x positives`` negatives with the highest background loss. Both sums are
divided by the number of positives in the batch.

Mining is written by hand because its exact rule matters: the background loss of each
prior is ``-log_softmax(conf)[..., 0]`` computed per row, never with ssd.pytorch's
batch-global log-sum-exp shift (one large logit anywhere in the batch turns every other
row's value to -inf there, and the mined set becomes arbitrary).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import cxcywh_to_xyxy, encode, host_reads_are_free, match_indices, pad_targets

__all__ = ["MultiBoxLoss", "mine_hard_negatives", "background_nll"]


def background_nll(conf: Tensor) -> Tensor:
    """-log softmax(conf)[..., 0] per row: (B, P, C) logits -> (B, P), without autograd.

    Each row is normalised on its own. The row-wise max shift of log-softmax is skipped
    (about twice as fast): ``log(sum(exp(conf)))`` is exact in float32 unless a logit
    overflows exp (the sum is inf) or a whole row underflows towards denormals (the sum
    is tiny); both are seen in the sums, and then the shifted form is used for every row.
    On the CPU the sums are read to choose; elsewhere both forms are computed and the
    choice made on the device, with the same result and no host sync.
    """
    # The class sum as a matrix-vector product: faster than a reduction over a last
    # dimension of only C elements.
    total = conf.exp() @ conf.new_ones(conf.shape[-1])
    low, high = torch.aminmax(total)
    if host_reads_are_free(total):
        if float(low) > 1e-30 and float(high) < float("inf"):
            return total.log_() - conf[..., 0]
        return -F.log_softmax(conf, dim=-1)[..., 0]
    in_range = (low > 1e-30) & (high < float("inf"))
    return torch.where(in_range, total.log_() - conf[..., 0], -F.log_softmax(conf, dim=-1)[..., 0])


def mine_hard_negatives(background_loss: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Choose, per image, the negatives with the highest background loss.

    Args:
        background_loss: (B, P) loss of predicting background at each prior.
        positive: (B, P) bool, priors matched to an object.
        neg_pos_ratio: negatives per positive.

    Returns:
        (B, P) bool mask of the chosen negatives (disjoint from ``positive``). An image
        chooses ``min(ratio * positives, P - 1)`` of them (ssd.pytorch's cap), hence none
        when it has no positive.

    On the CPU only the largest count in the batch is ranked (``topk``, after reading that
    count); on a GPU every row is ranked by a stable sort, whose length does not depend on
    the data (no host sync). Both choose the same negatives; equal losses at the boundary
    go to the lower prior index on a GPU, and to whichever ``topk`` returns on the CPU.
    """
    num_priors = background_loss.shape[1]
    num_neg = (neg_pos_ratio * positive.sum(dim=1, keepdim=True)).clamp(max=num_priors - 1)
    loss = background_loss.masked_fill(positive, -float("inf"))
    if not host_reads_are_free(loss):
        order = loss.sort(dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(num_priors, device=loss.device).expand_as(order)
        )
        return (rank < num_neg) & ~positive
    negative = torch.zeros_like(positive)
    most = int(num_neg.max()) if num_neg.numel() else 0
    if most == 0:
        return negative
    # topk of the largest count in the batch instead of a full sort of every row.
    order = loss.topk(most, dim=1).indices
    chosen = torch.arange(most, device=loss.device)[None] < num_neg
    negative.scatter_(1, order, chosen)
    return negative & ~positive


class MultiBoxLoss(nn.Module):
    """SSD's training loss.

    Args:
        num_classes: including background.
        iou_threshold: a prior whose best IoU reaches this is matched to that ground truth.
        neg_pos_ratio: mined negatives per positive.
        variances: encoding variances (centre, size).
        sync_positives: under torch.distributed (DDP), divide by the positives of the
            global batch (all-reduced over ranks) and multiply by the world size, so that
            DDP's averaging of gradients gives exactly the gradient of one process on the
            combined batch. Without it each rank divides by its own positives.

    forward(loc (B, P, 4), conf (B, P, C) logits, priors (P, 4) cxcywh, targets) ->
    ``(loss_loc, loss_conf)`` scalars. ``targets`` is a list of B dicts with ``boxes``
    (n, 4) xyxy as fractions of the image and ``labels`` (n,) int64 in 1..C-1; n may be 0.
    A batch without a single positive gives finite zero-valued terms (the divisor is at
    least 1). A degenerate ground-truth box raises ValueError naming the image and box.
    With the network on a GPU, keep ``targets`` in host memory (as the trainer does):
    they are checked and padded there, and the loss then waits for the GPU nowhere.
    """

    def __init__(
        self,
        num_classes: int,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3,
        variances: tuple[float, float] = (0.1, 0.2),
        sync_positives: bool = False,
    ) -> None:
        super().__init__()
        self.sync_positives = sync_positives
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.variances = variances

    def forward(
        self, loc: Tensor, conf: Tensor, priors: Tensor, targets: list[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        if len(targets) != loc.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {loc.shape[0]}")
        if conf.shape[-1] != self.num_classes:
            raise ValueError(f"conf has {conf.shape[-1]} classes, the loss expects {self.num_classes}")
        self._check_labels(targets)
        boxes, labels, valid = pad_targets(
            [t["boxes"] for t in targets], [t["labels"] for t in targets], priors.device
        )
        priors = priors.float()
        with torch.no_grad():
            best_truth, positive = match_indices(boxes, valid, cxcywh_to_xyxy(priors), self.iou_threshold)
            labels_t = torch.zeros_like(best_truth)
            if labels.shape[1]:
                labels_t = torch.where(positive, labels.gather(1, best_truth), 0)
            background_loss = background_nll(conf.detach().float())
            negative = mine_hard_negatives(background_loss, positive, self.neg_pos_ratio)
        divisor = self._divisor(positive).to(torch.float32)
        terms = _gathered_sums if host_reads_are_free(positive) else _masked_sums
        loss_loc, loss_conf = terms(loc, conf, priors, boxes, best_truth, labels_t, positive, negative,
                                    self.variances)  # fmt: skip
        return loss_loc / divisor, loss_conf / divisor

    def _check_labels(self, targets: list[dict[str, Tensor]]) -> None:
        """Labels in 1..C-1, checked where the targets are (the host, in the trainer)."""
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if not bool(((labels < 1) | (labels >= self.num_classes)).any()):
            return
        for image, target in enumerate(targets):  # only to name the culprit
            if bool(((target["labels"] < 1) | (target["labels"] >= self.num_classes)).any()):
                raise ValueError(
                    f"image {image} of the batch: labels must be in 1..{self.num_classes - 1}, "
                    f"got {target['labels'].tolist()}"
                )

    def _divisor(self, positive: Tensor) -> Tensor:
        count = positive.sum()
        if self.sync_positives and dist.is_available() and dist.is_initialized():
            count = count.clone()
            dist.all_reduce(count)
            return count.clamp(min=1) / dist.get_world_size()
        return count.clamp(min=1)


def _gathered_sums(
    loc: Tensor, conf: Tensor, priors: Tensor, boxes: Tensor, best_truth: Tensor, labels_t: Tensor,
    positive: Tensor, negative: Tensor, variances: tuple[float, float],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The two loss sums over the positives (and mined negatives) gathered into short rows:
    a few thousand rows enter the graph, not B x P (the CPU's form; the gather's length is
    read on the host)."""
    image, prior = positive.nonzero(as_tuple=True)
    matched = boxes[image, best_truth[image, prior]]
    loc_t = encode(matched, priors[prior], variances)
    loss_loc = F.smooth_l1_loss(loc[image, prior].float(), loc_t, beta=1.0, reduction="sum")
    image, prior = (positive | negative).nonzero(as_tuple=True)
    loss_conf = F.cross_entropy(conf[image, prior].float(), labels_t[image, prior], reduction="sum")
    return loss_loc, loss_conf


def _masked_sums(
    loc: Tensor, conf: Tensor, priors: Tensor, boxes: Tensor, best_truth: Tensor, labels_t: Tensor,
    positive: Tensor, negative: Tensor, variances: tuple[float, float],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The same sums over all B x P rows with the others masked to zero (a GPU's form: no
    shape depends on the data, so no host sync). Every selected row's term and gradient is
    the same float expression as in `_gathered_sums`; the unselected rows add exact zeros
    and get zero gradients, so only the order of the two sums' additions differs."""
    batch, num_priors = positive.shape
    if boxes.shape[1]:
        matched = boxes.gather(1, best_truth[:, :, None].expand(-1, -1, 4))  # (B, P, 4)
        loc_t = encode(matched, priors, variances)
    else:
        loc_t = loc.new_zeros(batch, num_priors, 4, dtype=torch.float32)
    rows = positive[:, :, None]
    loss_loc = F.smooth_l1_loss(
        torch.where(rows, loc.float(), 0.0), torch.where(rows, loc_t, 0.0), beta=1.0, reduction="sum"
    )
    selected = positive | negative
    logits = torch.where(selected[:, :, None], conf.float(), 0.0).flatten(0, 1)
    per_row = F.cross_entropy(logits, labels_t.flatten(), reduction="none")
    return loss_loc, torch.where(selected.flatten(), per_row, 0.0).sum()
