"""`SSD.predict`: images of any size in, detections in the original pixels out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .boxes import fractions_to_pixels
from .imageio import ImageLike, to_rgb_tensor
from .models.spec import MODEL_DEFAULT, PostprocessConfig
from .postprocess import detect
from .results import Detections, attach_sources
from .transforms import VGG_MEAN, preprocess, resize_bilinear  # re-exported: public API (README)

if TYPE_CHECKING:
    from .detector import Detector
    from .models.ssd import SSD

__all__ = ["VGG_MEAN", "MODEL_DEFAULT", "predict", "preprocess", "resize_bilinear"]


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
    parameter = next(model.parameters())
    std = getattr(model, "image_std", None)
    x = preprocess(tensors, model.image_size, model.image_mean, device=parameter.device, std=std)
    if parameter.dtype != torch.float32:
        x = x.to(parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            loc, conf = model(x)
            scores = torch.softmax(conf.float(), dim=-1)
            detections = detect(loc.float(), scores, model.priors.float(), **settings)
    finally:
        model.train(was_training)
    results = []
    for det, image in zip(detections, tensors):
        height, width = image.shape[-2:]
        boxes = fractions_to_pixels(det["boxes"], height, width)
        results.append({"boxes": boxes.cpu(), "scores": det["scores"].cpu(), "labels": det["labels"].cpu()})
    return attach_sources(results, inputs, tensors, model)
