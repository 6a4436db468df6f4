"""Deployment: ONNX, OpenVINO IR and TorchScript export, with decoding and NMS optionally
inside the graph, and the runtimes that run them as `singleshot.SSD.predict` does.

>>> from singleshot.export import export_onnx, OnnxDetector
>>> export_onnx(model, "ssd300.onnx", with_postprocess=True)
>>> detections = OnnxDetector("ssd300.onnx", threads=2).predict(["street.jpg"])   # as model.predict
>>> OpenVinoDetector("ssd300.onnx", threads=2).predict(["street.jpg"])   # the same file in OpenVINO
>>> verify_export(model, "ssd300.onnx", "onnx", with_postprocess=True)   # ValueError on a mismatch
>>> export_openvino(model, "ssd300.xml", with_postprocess=True)   # OpenVINO IR: ssd300.xml + .bin
>>> load_detector("ssd300.xml").predict(["street.jpg"])   # any checkpoint or exported file
>>> quantize_onnx("ssd300.onnx", "ssd300.int8.onnx", calibration_images("VOC2007", 100))   # int8 twin

The exported graphs take a normalised batch, float32 (B, 3, S, S): RGB on the 0-255 scale,
resized to S x S (bilinear, no antialiasing) minus the model's ``image_mean``, divided by
its ``image_std`` (all three are stored in the file's metadata). With post-processing they
return ``boxes`` (B, K, 4) xyxy as fractions of the input, ``scores`` (B, K), ``labels``
(B, K) and ``counts`` (B,).
"""

from .calibration import calibration_images
from .graph import (
    DetectorGraph,
    ForegroundScores,
    ForegroundScoresByProducts,
    PriorDecoder,
    TorchNMS,
    multiclass_nms,
    outputs_to_detections,
    surviving_scores,
)
from .int8 import quantize_onnx
from .load import FORMAT_RUNTIMES, load_detector, model_format, runtime_of
from .openvino import OpenVinoDetector
from .runtime import ExportedDetector, OnnxDetector, TorchScriptDetector, session_options
from .to_onnx import DEFAULT_OPSET, POSTPROCESS_DEFAULTS, export_onnx
from .to_openvino import export_openvino, onnx_to_openvino
from .to_torchscript import export_torchscript
from .verify import verify_export

__all__ = [
    "DetectorGraph",
    "ForegroundScores",
    "ForegroundScoresByProducts",
    "PriorDecoder",
    "TorchNMS",
    "multiclass_nms",
    "surviving_scores",
    "outputs_to_detections",
    "export_onnx",
    "export_torchscript",
    "export_openvino",
    "onnx_to_openvino",
    "load_detector",
    "model_format",
    "runtime_of",
    "FORMAT_RUNTIMES",
    "ExportedDetector",
    "OnnxDetector",
    "OpenVinoDetector",
    "TorchScriptDetector",
    "session_options",
    "verify_export",
    "DEFAULT_OPSET",
    "POSTPROCESS_DEFAULTS",
    "calibration_images",
    "quantize_onnx",
]
