"""Running an exported detector with OpenVINO's CPU plugin (``pip install singleshot[openvino]``).

OpenVINO reads the ``.onnx`` file `singleshot.export.export_onnx` writes and the OpenVINO
IR (``.xml`` + ``.bin``) `singleshot.export.export_openvino` writes (with or without
decoding and NMS inside), and compiles it for the CPU. Its CPU plugin may run float32
models in bfloat16 on CPUs that have it (``INFERENCE_PRECISION_HINT``); `OpenVinoDetector`
asks for float32, so that its detections equal `singleshot.SSD.predict`'s to float32
rounding.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .runtime import _ExportedDetector

__all__ = ["OpenVinoDetector", "METADATA_KEY"]

# Where the singleshot metadata sits in an OpenVINO model's runtime info: at the top of an
# IR written by `export_openvino`; under "framework" when OpenVINO converted or read the
# ONNX file itself (its ONNX frontend carries the ONNX metadata entries there).
METADATA_KEY = "singleshot"
_METADATA_PATHS = ([METADATA_KEY], ["framework", METADATA_KEY])


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept until the process ends.

    OpenVINO's CPU plugin gives the thread that first compiles a model an alternate signal
    stack, and unmaps it when the plugin is destroyed. Destroyed from another thread (a
    detector collected by the garbage collector wherever it runs), it leaves the first
    thread with an unmapped signal stack; Python's signal handlers run on that stack
    (SA_ONSTACK), so the next one there (e.g. PyTorch's SIGCHLD handler when a subprocess
    ends) kills the process with SIGSEGV. One Core for the whole process keeps its plugin,
    and that stack, alive.
    """
    import openvino as ov

    return ov.Core()


def read_metadata(model: Any, path: Path) -> dict[str, Any]:
    """The singleshot metadata of an ``openvino.Model`` read from ``path``.

    Raises:
        ValueError: the model carries none (the message names ``path``).
    """
    for key in _METADATA_PATHS:
        if model.has_rt_info(key):
            return dict(json.loads(model.get_rt_info(key).astype(str)))
    raise ValueError(f"{path}: not a singleshot export (no 'singleshot' metadata)")


class OpenVinoDetector(_ExportedDetector):
    """An exported detector compiled by OpenVINO: an OpenVINO IR ``.xml`` (weights in the
    ``.bin`` beside it) or an ``.onnx`` file, as singleshot wrote them.

    ``predict`` takes and returns what `singleshot.SSD.predict` does.

    Args:
        path: the ``.xml`` or ``.onnx`` file.
        threads: inference threads (None = OpenVINO's default, all cores).
        device: OpenVINO's device name ("CPU").
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, device: str = "CPU") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        core = openvino_core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as error:
            raise ValueError(f"{self.path}: OpenVINO cannot read it: {error}") from None
        self.metadata = read_metadata(model, self.path)
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as error:
            raise ValueError(f"{self.path}: OpenVINO cannot compile it: {error}") from None
        self.request = self.compiled.create_infer_request()

    def run(self, x: Tensor) -> list[Tensor]:
        """x float (B, 3, S, S) normalised -> the graph's outputs as tensors, in the file's order."""
        array = np.ascontiguousarray(x.cpu().numpy(), np.float32)
        results = self.request.infer({0: array})
        return [torch.from_numpy(np.array(results[output])) for output in self.compiled.outputs]
