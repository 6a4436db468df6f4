"""``singleshot::multiclass_nms``: a PyTorch operator that exports to ONNX NonMaxSuppression.

In PyTorch it runs `singleshot.export.graph.multiclass_nms` (torchvision's batched NMS);
the ONNX exporter translates it to one NonMaxSuppression node over all images and
classes, which applies the score threshold and NMS per (image, class) exactly as
``detect`` does. The operator exists only for ONNX export (TorchScript graphs use
`TorchNMS`, so loading them needs nothing but torch and torchvision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .graph import multiclass_nms

if TYPE_CHECKING:
    from onnxscript import FLOAT, INT64

__all__ = ["OnnxNMS", "ONNX_TRANSLATIONS"]

_INT64_MAX = 2**63 - 1


@torch.library.custom_op("singleshot::multiclass_nms", mutates_args=())
def _multiclass_nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    return multiclass_nms(boxes, scores, iou_threshold, score_threshold)


@_multiclass_nms_op.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def _multiclass_nms_onnx(boxes: FLOAT, scores: FLOAT, iou_threshold: float, score_threshold: float) -> INT64:
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        # onnxscript's stubs type Constant's result as any tensor type
        op.Constant(value_ints=[_INT64_MAX]),  # type: ignore[arg-type]
        op.Constant(value_floats=[iou_threshold]),  # type: ignore[arg-type]
        op.Constant(value_floats=[score_threshold]),  # type: ignore[arg-type]
        center_point_box=0,
    )


ONNX_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.singleshot.multiclass_nms.default: _multiclass_nms_onnx
}


class OnnxNMS(nn.Module):
    """The NMS step of `DetectorGraph` for ONNX export (same results as `TorchNMS`)."""

    def __init__(self, iou_threshold: float, score_threshold: float) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)

    def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
        return torch.ops.singleshot.multiclass_nms(boxes, scores, self.iou_threshold, self.score_threshold)
