"""Running an exported ONNX detector with OpenVINO's CPU plugin (``pip install singleshot[openvino]``).

OpenVINO reads the ``.onnx`` file `singleshot.export.export_onnx` writes (with or without
decoding and NMS inside) and compiles it for the CPU. Its CPU plugin may run float32 models
in bfloat16 on CPUs that have it (``INFERENCE_PRECISION_HINT``); `OpenVinoDetector` asks for
float32, so that its detections equal `singleshot.SSD.predict`'s to float32 rounding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .runtime import _ExportedDetector

__all__ = ["OpenVinoDetector"]


def _read_metadata(path: Path) -> dict:
    """The ``singleshot`` metadata entry of an ONNX file (OpenVINO does not expose it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "singleshot" not in props:
        raise ValueError(f"{path}: not a singleshot export (no 'singleshot' metadata)")
    return json.loads(props["singleshot"])


class OpenVinoDetector(_ExportedDetector):
    """An ONNX file written by `singleshot.export.export_onnx`, compiled by OpenVINO.

    ``predict`` takes and returns what `singleshot.SSD.predict` does.

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (None = OpenVINO's default, all cores).
        device: OpenVINO's device name ("CPU").
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, device: str = "CPU") -> None:
        import openvino as ov

        self.path = Path(path)
        self.metadata = _read_metadata(self.path)
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(self.path), device, config)
        except RuntimeError as error:
            raise ValueError(f"{self.path}: OpenVINO cannot compile it: {error}") from None
        self.request = self.compiled.create_infer_request()

    def run(self, x: Tensor) -> list[Tensor]:
        """x float (B, 3, S, S) normalised -> the graph's outputs as tensors, in the file's order."""
        array = np.ascontiguousarray(x.cpu().numpy(), np.float32)
        results = self.request.infer({0: array})
        return [torch.from_numpy(np.array(results[output])) for output in self.compiled.outputs]
