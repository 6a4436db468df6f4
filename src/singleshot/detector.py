"""What runs like a detector: `SSD` and the exported files' runners share this interface.

`singleshot.evaluation.evaluate_model`, `singleshot.pipeline.predict_files` and the
``eval`` / ``detect`` commands drive a `Detector`, so a checkpoint and an exported file
(`singleshot.export.load_detector`) go through the same loops. `PredictionStages` is a
detector's ``predict`` cut into its three steps, for timing each
(`singleshot.inference.prediction_stages`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from .models.spec import PostprocessConfig
    from .results import Detections

__all__ = ["Detector", "PredictionStages"]


@runtime_checkable
class Detector(Protocol):
    """Images in, detections in the images' pixels out, with the model's description.

    ``predict``'s keywords left out (or `singleshot.models.spec.MODEL_DEFAULT`) take
    ``postprocess``'s value; it returns one `singleshot.results.Detections` (a dict) per
    image: ``boxes`` float (N, 4) xyxy in the original image's pixels, ``scores`` (N,),
    ``labels`` int64 (N,) in 1..C-1.
    """

    @property
    def image_size(self) -> int:
        """S: the network's input is (B, 3, S, S)."""
        ...

    @property
    def num_classes(self) -> int:
        """C, background included."""
        ...

    @property
    def class_names(self) -> list[str] | None:
        """Name of each label, index 0 = "__background__" (None: unnamed)."""
        ...

    @property
    def postprocess(self) -> PostprocessConfig:
        """The post-processing ``predict`` applies when its keywords are left out."""
        ...

    def predict(
        self,
        images: Any,
        score_threshold: float = ...,
        nms_threshold: float = ...,
        pre_nms_top_k: int = ...,
        max_detections: int | None = ...,
    ) -> list[Detections]: ...


class PredictionStages(NamedTuple):
    """A detector's ``predict`` as three steps that run one after the other, for timing each.

    ``postprocess(network(preprocess(images)), sizes)`` gives ``predict(images)``'s
    detections (as plain dicts, without the image attached).

    Attributes:
        preprocess: decoded images, a list of uint8 (3, H, W) RGB tensors -> the network's
            input, float (B, 3, S, S): resized to S x S, minus the mean, divided by the std.
        network: that input -> the network's outputs: loc (B, P, 4) and conf (B, P, C) logits;
            for an export with decoding and NMS inside its graph, that graph's boxes (B, K, 4)
            xyxy fractions, scores (B, K), labels (B, K) and counts (B,).
        postprocess: (outputs, the images' (H, W) sizes) -> per image {"boxes" (N, 4) xyxy in
            the image's pixels, "scores" (N,), "labels" (N,)}: decoding, softmax and NMS, or for
            a graph with NMS inside only the conversion of its outputs to pixel boxes.
        network_includes_postprocess: whether decoding and NMS run inside ``network``.
    """

    preprocess: Callable[[Sequence[Tensor]], Tensor]
    network: Callable[[Tensor], Any]
    postprocess: Callable[[Any, Sequence[tuple[int, int]]], list[dict[str, Tensor]]]
    network_includes_postprocess: bool
