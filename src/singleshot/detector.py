"""What runs like a detector: `SSD` and the exported files' runners share this interface.

`singleshot.evaluation.evaluate_model`, `singleshot.pipeline.predict_files` and the
``eval`` / ``detect`` commands drive a `Detector`, so a checkpoint and an exported file
(`singleshot.export.load_detector`) go through the same loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .models.spec import PostprocessConfig
    from .results import Detections

__all__ = ["Detector"]


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
