"""ONNX export (torch.onnx's dynamo exporter), with or without post-processing in the graph."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..fileio import atomic_write
from .graph import DetectorGraph, ForegroundScoresByProducts

if TYPE_CHECKING:
    from ..models.ssd import SSD

__all__ = ["export_onnx", "export_metadata", "postprocess_settings", "DEFAULT_OPSET", "POSTPROCESS_DEFAULTS"]

DEFAULT_OPSET = 18
POSTPROCESS_DEFAULTS: dict[str, Any] = {
    "score_threshold": 0.01,
    "nms_threshold": 0.45,
    "pre_nms_top_k": 200,
    "max_detections": 200,
    "clip": False,
}


def postprocess_settings(model: SSD, given: Mapping[str, Any]) -> dict[str, Any]:
    """The detector's settings for an export: ``model.postprocess`` with ``given`` over it.

    Raises:
        ValueError: a name in ``given`` that is not a post-processing setting.
    """
    unknown = set(given) - set(POSTPROCESS_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown post-processing options: {', '.join(sorted(unknown))}")
    own = getattr(model, "postprocess", None)
    base = own.to_dict() if own is not None else dict(POSTPROCESS_DEFAULTS)
    return {**base, **given}


def export_metadata(model: SSD, with_postprocess: bool, postprocess: dict[str, Any] | None) -> dict[str, Any]:
    """What a runtime needs besides the graph: input size and mean, classes, outputs.

    ``class_names`` (index 0 = "__background__") name the output labels; ``category_ids``
    are the training set's id of each label (COCO category ids) when it had them, else None.
    """
    return {
        "format": "singleshot",
        "preset": model.preset,
        "num_classes": model.num_classes,
        "class_names": model.class_names,
        "category_ids": getattr(model, "category_ids", None),
        "image_size": model.image_size,
        "image_mean": list(model.image_mean),
        "image_std": list(getattr(model, "image_std", (1.0, 1.0, 1.0))),
        "prior_config": model.prior_config.to_dict(),
        "input": (
            "images: float32 (B, 3, S, S), (RGB 0-255 resized to S x S (bilinear) - image_mean) / image_std"
        ),
        "outputs": (["boxes", "scores", "labels", "counts"] if with_postprocess else ["loc", "conf"]),
        "postprocess": postprocess if with_postprocess else None,
        # what a runtime applies to a network-only export when the caller sets nothing
        "model_postprocess": postprocess_settings(model, {}),
    }


def export_onnx(
    model: SSD,
    path: str | os.PathLike,
    with_postprocess: bool = False,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
    **postprocess: Any,
) -> Path:
    """Write an SSD as ONNX with a dynamic batch dimension.

    Args:
        model: a `singleshot.SSD` (exported in eval mode, on the CPU, in float32).
        path: the ``.onnx`` file to write (weights inside the file).
        with_postprocess: False: input ``images`` -> ``loc`` (B, P, 4), ``conf`` (B, P, C)
            logits. True: the whole detector (`DetectorGraph`): ``images`` -> ``boxes``
            (B, K, 4) xyxy fractions of the input, ``scores`` (B, K), ``labels`` int64 (B, K),
            ``counts`` int64 (B,), decoding and NMS inside the graph.
        opset: ONNX opset (>= 17).
        example_batch: batch size of the tracing example (>= 2, so the batch stays symbolic).
        **postprocess: ``score_threshold``, ``nms_threshold``, ``pre_nms_top_k``,
            ``max_detections``, ``clip`` (defaults: ``model.postprocess``, as `predict`'s).

    The model's preset, classes, input size and mean are stored as JSON in the ONNX
    metadata under ``"singleshot"`` (see `singleshot.export.OnnxDetector`).
    """
    import onnx

    from .onnx_ops import ONNX_TRANSLATIONS

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    model.refuse_export()  # before the exporter, which would bury the message in its own
    params = postprocess_settings(model, postprocess)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    model = _cpu_float_copy(model)
    module, output_names = _graph_module(model, with_postprocess, params)
    size = model.image_size
    example = torch.zeros(max(example_batch, 2), 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            custom_translation_table=ONNX_TRANSLATIONS if with_postprocess else None,
            verbose=False,
        )
    assert program is not None  # the dynamo exporter always returns its program
    proto = program.model_proto
    meta = export_metadata(model, with_postprocess, params)
    onnx.helper.set_model_props(proto, {"singleshot": json.dumps(meta)})
    return atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))


def _graph_module(
    model: SSD, with_postprocess: bool, params: dict[str, Any]
) -> tuple[torch.nn.Module, list[str]]:
    """(module to export, its output names): the network alone, or the whole `DetectorGraph`
    with the NMS that exports as ONNX's NonMaxSuppression and the softmax written for ONNX
    Runtime."""
    from .onnx_ops import OnnxNMS

    if not with_postprocess:
        return model, ["loc", "conf"]
    module = DetectorGraph(
        model,
        model.priors,
        model.num_classes,
        **params,
        nms=OnnxNMS(params["nms_threshold"], params["score_threshold"]),
        scores=ForegroundScoresByProducts(),
    ).eval()
    return module, ["boxes", "scores", "labels", "counts"]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and log chatter (e.g. onnx_ir's note on empty attributes)."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _cpu_float_copy(model: SSD) -> SSD:
    import copy

    model = copy.deepcopy(model).cpu().float().eval()
    return model
