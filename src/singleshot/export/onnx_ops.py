"""``singleshot::surviving_scores``: a PyTorch operator that exports to ONNX NonMaxSuppression.

In PyTorch it runs `singleshot.export.graph.surviving_scores` (torchvision's batched NMS,
the survivors' scores left in place in a table of zeros); the ONNX exporter translates
it to one NonMaxSuppression node over all images and classes, which applies the score
threshold and NMS per (image, class) exactly as ``detect`` does, and a gather and a
scatter of the survivors' scores into zeros. The table's shape is the scores' own, so the
exported graph has no data-dependent shape after NMS. The operator exists only for ONNX
export (TorchScript graphs use `TorchNMS`, so loading them needs nothing but torch and
torchvision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .graph import surviving_scores

if TYPE_CHECKING:
    from onnxscript import FLOAT

__all__ = ["OnnxNMS", "ONNX_TRANSLATIONS"]

_INT64_MAX = 2**63 - 1


@torch.library.custom_op("singleshot::surviving_scores", mutates_args=())
def _surviving_scores_op(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float
) -> Tensor:
    return surviving_scores(boxes, scores, iou_threshold, score_threshold)


@_surviving_scores_op.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    return torch.empty_like(scores)


def _surviving_scores_onnx(
    boxes: FLOAT, scores: FLOAT, iou_threshold: float, score_threshold: float
) -> FLOAT:
    from onnxscript import opset18 as op

    kept = op.NonMaxSuppression(  # (M, 3) int64 [image, class, prior]
        boxes,
        scores,
        # onnxscript's stubs type Constant's result as any tensor type
        op.Constant(value_ints=[_INT64_MAX]),  # type: ignore[arg-type]
        op.Constant(value_floats=[iou_threshold]),  # type: ignore[arg-type]
        op.Constant(value_floats=[score_threshold]),  # type: ignore[arg-type]
        center_point_box=0,
    )
    zeros = op.ConstantOfShape(op.Shape(scores))  # float32 zeros, ONNX's default value
    # onnxscript's stubs type ConstantOfShape's result as any tensor type
    return op.ScatterND(zeros, kept, op.GatherND(scores, kept))  # type: ignore[type-var, return-value]


ONNX_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.singleshot.surviving_scores.default: _surviving_scores_onnx
}


class OnnxNMS(nn.Module):
    """The NMS step of `DetectorGraph` for ONNX export (same results as `TorchNMS`)."""

    def __init__(self, iou_threshold: float, score_threshold: float) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)

    def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
        return torch.ops.singleshot.surviving_scores(boxes, scores, self.iou_threshold, self.score_threshold)
