"""Running exported detectors on images: ONNX Runtime and TorchScript.

Both take what `singleshot.SSD.predict` takes and return what it returns, so an exported
model can stand in for the PyTorch one (and be checked against it).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..boxes import fractions_to_pixels
from ..imageio import ImageLike, to_rgb_tensor
from ..postprocess import detect
from ..results import Detections, attach_sources
from ..transforms import preprocess
from .graph import outputs_to_detections
from .to_onnx import POSTPROCESS_DEFAULTS

__all__ = ["OnnxDetector", "TorchScriptDetector"]


class _ExportedDetector:
    """Shared preprocessing and output handling; subclasses implement `run`."""

    metadata: dict[str, Any]
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def image_mean(self) -> tuple[float, ...]:
        return tuple(float(m) for m in self.metadata["image_mean"])

    @property
    def image_std(self) -> tuple[float, ...]:
        """1.0 for files exported before the models had one."""
        return tuple(float(s) for s in self.metadata.get("image_std") or (1.0, 1.0, 1.0))

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata.get("class_names")

    @property
    def category_ids(self) -> list[int] | None:
        """The training set's id of each label (COCO category ids), when the model had them."""
        return self.metadata.get("category_ids")

    @property
    def with_postprocess(self) -> bool:
        return self.metadata.get("postprocess") is not None

    def run(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def predict(self, images: ImageLike | Sequence[ImageLike], **postprocess: Any) -> list[Detections]:
        """Images (uint8 (3, H, W) RGB tensors, PIL images or paths) -> one
        `singleshot.results.Detections` per image, as `SSD.predict`: ``boxes`` (N, 4) xyxy
        in the original pixels, ``scores`` (N,), ``labels`` int64 (N,).

        ``postprocess`` (``score_threshold``, ``nms_threshold``, ``pre_nms_top_k``,
        ``max_detections``, ``clip``) applies to network-only exports, post-processed here
        in PyTorch (defaults: the exported model's own, as its `predict`); a graph with
        post-processing has them built in.
        """
        unknown = set(postprocess) - set(POSTPROCESS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown post-processing options: {', '.join(sorted(unknown))}")
        if postprocess and self.with_postprocess:
            raise ValueError(
                f"{self.path}: post-processing options are fixed inside this graph (set at export)"
            )
        items = images if isinstance(images, (list, tuple)) else [images]
        tensors = [to_rgb_tensor(image) for image in items]
        if not tensors:
            return []
        x = preprocess(tensors, self.image_size, self.image_mean, std=self.image_std)
        outputs = self.run(x)
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        if self.with_postprocess:
            boxes, scores, labels, counts = outputs
            raw = outputs_to_detections(boxes, scores, labels, counts, image_sizes=sizes)
            return attach_sources(raw, items, tensors, self)
        # network only: post-process in PyTorch, by default as the exported model's predict
        loc, conf = outputs
        params = {**(self.metadata.get("model_postprocess") or POSTPROCESS_DEFAULTS), **postprocess}
        detections = detect(
            loc.float(),
            torch.softmax(conf.float(), dim=-1),
            self._priors(),
            score_threshold=params["score_threshold"],
            nms_threshold=params["nms_threshold"],
            pre_nms_top_k=params["pre_nms_top_k"],
            max_detections=params["max_detections"],
            clip=params["clip"],
        )
        results = []
        for det, (height, width) in zip(detections, sizes):
            boxes = fractions_to_pixels(det["boxes"], height, width)
            results.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"]})
        return attach_sources(results, items, tensors, self)

    def _priors(self) -> Tensor:
        from ..presets import get_preset
        from ..priors import PriorConfig, generate_priors

        config = self.metadata.get("prior_config")
        if config is not None:
            return generate_priors(PriorConfig.from_dict(config))
        return generate_priors(get_preset(self.metadata["preset"]).prior_config)


class OnnxDetector(_ExportedDetector):
    """An ONNX file written by `singleshot.export.export_onnx`, run with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None = ONNX Runtime's default, all cores).
        providers: execution providers (None = CPU).
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None
    ):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX model: {error}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "singleshot" not in props:
            raise ValueError(f"{self.path}: not a singleshot export (no 'singleshot' metadata)")
        self.metadata = json.loads(props["singleshot"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: Tensor) -> list[Tensor]:
        """x float (B, 3, S, S) normalised -> the graph's outputs as tensors."""
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(x.cpu().numpy(), np.float32)})
        return [torch.from_numpy(o) for o in outputs]


class TorchScriptDetector(_ExportedDetector):
    """A TorchScript file written by `singleshot.export.export_torchscript`."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        import torchvision  # noqa: F401  (registers torchvision::nms for the loaded graph)

        self.path = Path(path)
        extra = {"singleshot.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.module = torch.jit.load(str(self.path), map_location=device, _extra_files=extra)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"{self.path}: not a loadable TorchScript file: {error}") from None
        if not extra["singleshot.json"]:
            raise ValueError(f"{self.path}: not a singleshot export (no singleshot.json inside)")
        self.metadata = json.loads(extra["singleshot.json"])
        self.device = torch.device(device)

    def run(self, x: Tensor) -> list[Tensor]:
        with torch.inference_mode():
            outputs = self.module(x.to(self.device))
        return [o.cpu() for o in outputs]
