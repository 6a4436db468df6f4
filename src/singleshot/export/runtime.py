"""Running exported detectors on images: ONNX Runtime and TorchScript.

Both take what `singleshot.SSD.predict` takes and return what it returns, and describe
themselves as a model does (``image_size``, ``class_names``, ``num_classes``,
``postprocess``: a `singleshot.detector.Detector`), so an exported model can stand in for
the PyTorch one (and be checked against it). `session_options` holds the ONNX Runtime
settings (threads, spinning, optimisation) of every session singleshot makes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..boxes import fractions_to_pixels
from ..detector import PredictionStages
from ..imageio import ImageLike, to_rgb_tensor
from ..models.spec import MODEL_DEFAULT, PostprocessConfig
from ..postprocess import detect
from ..results import Detections, attach_sources
from ..transforms import preprocess
from .graph import outputs_to_detections
from .to_onnx import POSTPROCESS_DEFAULTS

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["ExportedDetector", "OnnxDetector", "TorchScriptDetector", "session_options"]

# ONNX Runtime's session configuration keys: may idle intra-op worker threads spin-wait ("1") or
# must they sleep ("0")? Do spinning threads stop as soon as a run returns ("1")?
_ALLOW_SPINNING = "session.intra_op.allow_spinning"
_STOP_SPINNING = "session.force_spinning_stop"


def session_options(threads: int | None = None, spin: bool = True) -> onnxruntime.SessionOptions:
    """The ONNX Runtime ``SessionOptions`` every singleshot session is made with.

    - Intra-op threads (``intra_op_num_threads``): the threads that split one operator's work
      (a convolution's output rows, say): ``threads``, or ONNX Runtime's own choice, one per
      physical core, when None.
    - Inter-op threads (``inter_op_num_threads``): 1. They would run independent branches of
      the graph at once, which only the parallel execution mode does; under the sequential
      mode set here ONNX Runtime makes no inter-op pool, so this only keeps the count from
      growing should the mode change.
    - Execution mode: sequential, one operator after another (ONNX Runtime's default): an
      SSD graph is mostly one chain, and the intra-op threads already share out the cores.
    - Graph optimisation level: all (constant folding, operator fusion such as convolution
      + activation, layout changes for the CPU kernels), as ONNX Runtime's default.
    - Spinning (the ``session.intra_op.allow_spinning`` config entry): with ``spin`` ("1",
      ONNX Runtime's default), idle worker threads busy-wait a moment for the next piece of
      work, which answers fastest when nothing else runs; without ("0") they sleep, so that
      they leave the cores to other work between runs: wanted when ONNX Runtime runs
      alternately with other runtimes, or on a machine shared with other processes, where
      spinning threads slow the others and are preempted themselves.
    - Spinning stops when a run returns (``session.force_spinning_stop`` "1"; ONNX Runtime's
      default "0" lets the threads go on spinning after it): between runs the caller's own
      pre- and post-processing (PyTorch's threads) gets the cores (benchmarks/README.md has
      the figures).

    Args:
        threads: intra-op threads, an int >= 1, or None for ONNX Runtime's default.
        spin: whether idle worker threads spin-wait (True) or sleep (False).

    Returns:
        An ``onnxruntime.SessionOptions`` for ``onnxruntime.InferenceSession(path, options)``.

    Raises:
        ValueError: ``threads`` is not None nor an int >= 1 (ONNX Runtime itself takes 0 as
            its default and accepts a negative count without a word).
    """
    import onnxruntime as ort

    counts = isinstance(threads, Integral) and not isinstance(threads, bool)  # True is no count
    if threads is not None and not (counts and threads >= 1):
        raise ValueError(f"ONNX Runtime threads must be an int >= 1 or None (its default), got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0 if threads is None else int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(_ALLOW_SPINNING, "1" if spin else "0")
    options.add_session_config_entry(_STOP_SPINNING, "1")
    return options


class _ExportedDetector:
    """Shared preprocessing and output handling; subclasses implement `run`."""

    metadata: dict[str, Any]
    path: Path
    runtime: str  # what runs the file: "onnxruntime", "openvino" or "torch"

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
    def num_classes(self) -> int:
        """C, background included."""
        return int(self.metadata["num_classes"])

    @property
    def with_postprocess(self) -> bool:
        return self.metadata.get("postprocess") is not None

    @property
    def postprocess(self) -> PostprocessConfig:
        """What `predict` applies when its keywords are left out: the settings built into a
        graph with post-processing (fixed at export), else the exported model's own
        (``model.postprocess`` at export time, as its `predict`)."""
        built_in = self.metadata.get("postprocess")
        return self.model_postprocess if built_in is None else PostprocessConfig.from_dict(built_in)

    @property
    def model_postprocess(self) -> PostprocessConfig:
        """The exported model's own post-processing (``model.postprocess`` at export time),
        whatever a graph with NMS inside was built with."""
        return PostprocessConfig.from_dict(self.metadata.get("model_postprocess") or POSTPROCESS_DEFAULTS)

    def settings(self, **given: Any) -> dict[str, Any]:
        """The post-processing a `predict` call with these keywords runs: ``given`` over
        ``postprocess`` (values that are `MODEL_DEFAULT` count as left out).

        A graph with post-processing can only narrow what it was built with: a higher
        ``score_threshold`` drops its lower-scored detections, which gives exactly the
        detections of the model at that threshold (NMS never lets a lower score suppress a
        higher one, and the top-k cuts keep the best). Anything else it cannot honour.

        Raises:
            ValueError: an unknown keyword; for a graph with post-processing, a lower
                ``score_threshold`` or another NMS setting than it was built with.
        """
        given = {name: value for name, value in given.items() if value is not MODEL_DEFAULT}
        unknown = set(given) - set(POSTPROCESS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown post-processing options: {', '.join(sorted(unknown))}")
        own = self.postprocess.to_dict()
        if not self.with_postprocess:
            return {**own, **given}
        fixed = sorted(
            name for name, value in given.items() if name != "score_threshold" and value != own[name]
        )
        if fixed:
            built = ", ".join(f"{name}={own[name]}" for name in fixed)
            raise ValueError(
                f"{self.path}: NMS is inside this graph, built at export with {built}; export again "
                "with the settings you want, or without --with-postprocess"
            )
        threshold = float(given.get("score_threshold", own["score_threshold"]))
        if threshold < own["score_threshold"]:
            raise ValueError(
                f"{self.path}: NMS is inside this graph and keeps only scores above "
                f"{own['score_threshold']} (set at export), so score threshold {threshold} cannot "
                f"apply; export again with --score-threshold {threshold} (or without --with-postprocess)"
            )
        return {**own, "score_threshold": threshold}

    def run(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        score_threshold: float = MODEL_DEFAULT,
        nms_threshold: float = MODEL_DEFAULT,
        pre_nms_top_k: int = MODEL_DEFAULT,
        max_detections: int | None = MODEL_DEFAULT,
        clip: bool = MODEL_DEFAULT,
    ) -> list[Detections]:
        """Images (uint8 (3, H, W) RGB tensors, PIL images or paths) -> one
        `singleshot.results.Detections` per image, as `SSD.predict`: ``boxes`` (N, 4) xyxy
        in the original pixels, ``scores`` (N,), ``labels`` int64 (N,).

        ``score_threshold``, ``nms_threshold``, ``pre_nms_top_k``, ``max_detections``,
        ``clip``: as `SSD.predict`'s (left out: ``self.postprocess``).
        A network-only export is post-processed here in PyTorch; a graph with
        post-processing runs its own, and takes only a higher ``score_threshold`` (see
        `settings`).
        """
        stages = self.prediction_stages(
            score_threshold=score_threshold, nms_threshold=nms_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections, clip=clip,
        )  # fmt: skip
        items = images if isinstance(images, (list, tuple)) else [images]
        tensors = [to_rgb_tensor(image) for image in items]
        if not tensors:
            return []
        outputs = stages.network(stages.preprocess(tensors))
        results = stages.postprocess(outputs, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])
        return attach_sources(results, items, tensors, self)

    def prediction_stages(
        self,
        score_threshold: float = MODEL_DEFAULT,
        nms_threshold: float = MODEL_DEFAULT,
        pre_nms_top_k: int = MODEL_DEFAULT,
        max_detections: int | None = MODEL_DEFAULT,
        clip: bool = MODEL_DEFAULT,
    ) -> PredictionStages:
        """`predict` with these keywords as its three steps (`singleshot.detector.PredictionStages`):
        `preprocess`, the file's graph (`run`; with decoding and NMS inside when the graph has
        post-processing), then the rest: for a network-only export decoding and NMS in
        PyTorch, else the graph's outputs turned into pixel boxes.

        Raises:
            ValueError: settings the graph cannot apply (see `settings`).
        """
        params = self.settings(
            score_threshold=score_threshold, nms_threshold=nms_threshold, pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections, clip=clip,
        )  # fmt: skip

        def prepare(tensors: Sequence[Tensor]) -> Tensor:
            return preprocess(tensors, self.image_size, self.image_mean, std=self.image_std)

        def finish(outputs: list[Tensor], sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
            if self.with_postprocess:
                return self._graph_detections(outputs, sizes, params["score_threshold"])
            return self._detections(outputs, sizes, params)

        return PredictionStages(prepare, self.run, finish, network_includes_postprocess=self.with_postprocess)

    def _graph_detections(
        self, outputs: list[Tensor], sizes: Sequence[tuple[int, int]], threshold: float
    ) -> list[dict[str, Tensor]]:
        """A graph with post-processing: its padded outputs as per-image detections in pixels,
        those at or below ``threshold`` dropped when it is above the graph's own."""
        boxes, scores, labels, counts = outputs
        raw = outputs_to_detections(boxes, scores, labels, counts, image_sizes=list(sizes))
        if threshold != self.postprocess.score_threshold:
            raw = [_above(det, threshold) for det in raw]
        return raw

    def _detections(
        self, outputs: list[Tensor], sizes: Sequence[tuple[int, int]], params: dict[str, Any]
    ) -> list[dict[str, Tensor]]:
        """A network-only export: loc and conf post-processed in PyTorch, boxes in pixels."""
        loc, conf = outputs
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
        return results

    def _priors(self) -> Tensor:
        from ..presets import get_preset
        from ..priors import PriorConfig, generate_priors

        config = self.metadata.get("prior_config")
        if config is not None:
            return generate_priors(PriorConfig.from_dict(config))
        return generate_priors(get_preset(self.metadata["preset"]).prior_config)


# The public name of the runners' base, for ``isinstance`` (a checkpoint's model is an `SSD`).
ExportedDetector = _ExportedDetector


def _above(detections: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """The detections scoring strictly above ``threshold`` (they are sorted by score)."""
    keep = detections["scores"] > threshold
    return {key: value[keep] for key, value in detections.items()}


class OnnxDetector(_ExportedDetector):
    """An ONNX file written by `singleshot.export.export_onnx`, run with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads, >= 1 (None = ONNX Runtime's default, one per physical core).
        providers: execution providers (None = CPU).
        spin: whether idle worker threads spin-wait for the next run (ONNX Runtime's
            default: the lowest latency). Off when it runs alternately with other runtimes,
            whose runs the spinning threads would slow down.

    The session is made with `session_options` (which says what each setting does).
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: list[str] | None = None,
        spin: bool = True,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        options = session_options(threads, spin)
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

    runtime = "torch"

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
