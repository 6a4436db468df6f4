"""`SSD.predict`: images of any size in, detections in the original pixels out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .boxes import fractions_to_pixels
from .detector import PredictionStages
from .imageio import ImageLike, to_rgb_tensor
from .models.spec import MODEL_DEFAULT, PostprocessConfig
from .postprocess import class_probabilities, detect
from .results import Detections, attach_sources
from .transforms import VGG_MEAN, preprocess, resize_bilinear  # re-exported: public API (README)

if TYPE_CHECKING:
    from .detector import Detector
    from .models.ssd import SSD

__all__ = ["VGG_MEAN", "MODEL_DEFAULT", "predict", "prediction_stages", "preprocess", "resize_bilinear"]


def _settings(model: SSD, **given: Any) -> dict[str, Any]:
    """`detect`'s settings: the ones given, the others from ``model.postprocess`` (or
    `PostprocessConfig`'s defaults for a model without one)."""
    defaults = getattr(model, "postprocess", None) or PostprocessConfig()
    settings = {"clip": defaults.clip}
    for name, value in given.items():
        settings[name] = getattr(defaults, name) if value is MODEL_DEFAULT else value
    return settings


def predict(
    model: SSD | Detector,
    images: ImageLike | Sequence[ImageLike],
    score_threshold: float = MODEL_DEFAULT,
    nms_threshold: float = MODEL_DEFAULT,
    pre_nms_top_k: int = MODEL_DEFAULT,
    max_detections: int | None = MODEL_DEFAULT,
) -> list[Detections]:
    """See `singleshot.SSD.predict`. ``model``: a PyTorch module that runs as an SSD (any with
    ``image_size``, ``image_mean`` and ``priors``), or an exported file's runner
    (`singleshot.export.load_detector`), which predicts by itself."""
    if not isinstance(model, torch.nn.Module):
        return model.predict(
            images,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections,
        )
    settings = _settings(
        model,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        pre_nms_top_k=pre_nms_top_k,
        max_detections=max_detections,
    )
    inputs = list(images) if isinstance(images, (list, tuple)) else [images]
    tensors = [to_rgb_tensor(image) for image in inputs]
    if not tensors:
        return []
    stages = _module_stages(model, settings)
    was_training = model.training
    model.eval()
    try:
        outputs = stages.network(stages.preprocess(tensors))
    finally:
        model.train(was_training)
    results = stages.postprocess(outputs, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])
    return attach_sources(results, inputs, tensors, model)


def prediction_stages(
    model: SSD | Detector,
    score_threshold: float = MODEL_DEFAULT,
    nms_threshold: float = MODEL_DEFAULT,
    pre_nms_top_k: int = MODEL_DEFAULT,
    max_detections: int | None = MODEL_DEFAULT,
) -> PredictionStages:
    """``predict(model, images, ...)`` cut into its pre-processing, network and
    post-processing steps (see `singleshot.detector.PredictionStages`), for timing each.

    ``model``: a PyTorch module that runs as an SSD (in eval mode: the stages do not switch
    it, as ``predict`` does), or an exported file's runner (its ``prediction_stages``).
    Settings left out are ``model.postprocess``'s, as for ``predict``.

    Raises:
        ValueError: a model that is neither (the message names its type).
    """
    given = {"score_threshold": score_threshold, "nms_threshold": nms_threshold,
             "pre_nms_top_k": pre_nms_top_k, "max_detections": max_detections}  # fmt: skip
    if isinstance(model, torch.nn.Module):
        return _module_stages(model, _settings(model, **given))
    stages = getattr(model, "prediction_stages", None)
    if stages is None:
        raise ValueError(f"{type(model).__name__}: cannot run predict's steps apart (no prediction_stages)")
    return stages(**given)


def _module_stages(model: SSD, settings: dict[str, Any]) -> PredictionStages:
    """The stages of `predict` for a PyTorch SSD, with `detect`'s ``settings``."""
    parameter = next(model.parameters())
    std = getattr(model, "image_std", None)

    def prepare(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        x = preprocess(tensors, model.image_size, model.image_mean, device=parameter.device, std=std)
        return x if parameter.dtype == torch.float32 else x.to(parameter.dtype)

    def network(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return model(x)

    def finish(outputs: tuple[torch.Tensor, torch.Tensor], sizes: Sequence[tuple[int, int]]) -> list[dict]:
        loc, conf = outputs
        with torch.inference_mode():
            scores = class_probabilities(conf.float())
            detections = detect(loc.float(), scores, model.priors.float(), **settings)
        results = []
        for det, (height, width) in zip(detections, sizes):
            boxes = fractions_to_pixels(det["boxes"], height, width)
            results.append({"boxes": boxes.cpu(), "scores": det["scores"].cpu(),
                            "labels": det["labels"].cpu()})  # fmt: skip
        return results

    return PredictionStages(prepare, network, finish, network_includes_postprocess=False)
