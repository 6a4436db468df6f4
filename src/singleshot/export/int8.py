"""Static post-training int8 quantisation of a float ONNX export (ONNX Runtime's QDQ format).

`quantize_onnx` turns a file written by `singleshot.export.export_onnx` (with or without
post-processing) into an int8 file that `singleshot.export.OnnxDetector` runs the same way:

1. ONNX Runtime's ``quant_pre_process`` prepares the graph (shape inference, basic fusions);
2. calibration images, preprocessed exactly as the deployed model sees them (the size,
   mean and std of the file's metadata; `singleshot.export.calibration.ImageBatches`),
   give every activation of the network its range (min/max);
3. ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs around the network's
   operators: weights int8 with one scale per output channel, activations uint8. ONNX
   Runtime runs each DequantizeLinear -> Conv -> QuantizeLinear as an integer QLinearConv.

What stays float: everything after the network (decoding, softmax, NMS); inside it the
operators with no integer kernel to gain from (the norm and division of L2 normalisation,
hard-swish / hard-sigmoid, the reshapes and concatenation of the heads' outputs); and the
layers named in ``float_layers``, by position in the graph (`float_layer_nodes`):

- ``"first"`` (the default, for every architecture): the convolution reading the image.
  Measured on the demo model (benchmarks/README.md): the same VOC07 mAP either way, and
  faster in float (0.12 against 0.23 ms: three input channels leave int8 little to save,
  and quantising the image adds a pass and a layout change over it). On a trained
  SSDLite320 too the default keeps the mAP (93.22 float, 93.29 int8), with the
  products of its hard-swish and squeeze-excitation gates and its extras and heads in
  int8, so no architecture needs another default;
- ``"heads"``: the loc and conf predictors (the last convolution on every path to an
  output). Measured on the demo model: no mAP change (91.28 against 91.27), but the
  speed-up over float falls from 2.3-2.4x to 1.5-1.6x (one thread, batch 1), so they
  are int8 unless asked. On the trained SSDLite320 neither helps mAP either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..fileio import atomic_write
from .calibration import ImageBatches

if TYPE_CHECKING:
    import onnx

__all__ = ["FLOAT_LAYERS", "QUANTIZED_OPS", "quantize_onnx", "float_layer_nodes", "network_nodes"]

FLOAT_LAYERS = ("first", "heads")
# Operators quantised inside the network: convolutions and what ONNX Runtime fuses into
# integer kernels around them (ReLU / ReLU6 folded into the quantisation range, max pooling
# on uint8, residual additions and SE scalings as QLinearAdd / QLinearMul).
QUANTIZED_OPS = ("Conv", "Relu", "Clip", "MaxPool", "Add", "Mul")


def float_layer_nodes(graph: onnx.GraphProto, float_layers: Iterable[str]) -> list[str]:
    """Names of the Conv nodes of ``graph`` to keep in float.

    Args:
        graph: an exported graph (with or without post-processing).
        float_layers: any of `FLOAT_LAYERS`: "first" = the convolutions reading a graph
            input; "heads" = the convolutions with a path to a graph output through no
            other convolution (the loc and conf predictors).
    """
    float_layers = set(float_layers)
    unknown = float_layers - set(FLOAT_LAYERS)
    if unknown:
        raise ValueError(f"unknown float layers {sorted(unknown)}; choose from {', '.join(FLOAT_LAYERS)}")
    inputs = {value.name for value in graph.input}
    outputs = {value.name for value in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_output(conv: onnx.NodeProto) -> bool:  # through no other convolution
        reached = _closure(conv, lambda node: [c for t in node.output for c in consumers.get(t, [])],
                           through=lambda node: node.op_type != "Conv")  # fmt: skip
        return any(name in outputs for node in reached for name in node.output)

    return [
        node.name for node in graph.node
        if node.op_type == "Conv" and (("first" in float_layers and node.input[0] in inputs)
                                       or ("heads" in float_layers and reaches_output(node)))
    ]  # fmt: skip


def network_nodes(graph: onnx.GraphProto, op_types: Iterable[str] = QUANTIZED_OPS) -> list[str]:
    """Names of the nodes of ``graph`` of ``op_types`` that belong to the network.

    The network is the convolutions and every node a convolution depends on; decoding,
    softmax and NMS come after the last convolutions (the heads), so none is included.
    """
    op_types = set(op_types)
    producer = {name: node for node in graph.node for name in node.output}
    network: set[int] = set()
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        if id(conv) not in network:
            found = _closure(conv, lambda node: [producer[t] for t in node.input if t in producer])
            network |= {id(node) for node in found}
    return [node.name for node in graph.node if id(node) in network and node.op_type in op_types]


def _closure(
    start: onnx.NodeProto,
    neighbours: Callable[[onnx.NodeProto], list[onnx.NodeProto]],
    through: Callable[[onnx.NodeProto], bool] = lambda node: True,
) -> list[onnx.NodeProto]:
    """``start`` and the nodes reached from it by ``neighbours``, entering only nodes ``through`` accepts."""
    found = {id(start): start}
    pending = [start]
    while pending:
        for node in neighbours(pending.pop()):
            if id(node) not in found and through(node):
                found[id(node)] = node
                pending.append(node)
    return list(found.values())


def quantize_onnx(
    float_path: str | os.PathLike,
    path: str | os.PathLike,
    calibration: Sequence[Tensor],
    float_layers: Iterable[str] = ("first",),
    batch_size: int = 8,
    progress: bool = False,
) -> Path:
    """Write an int8 twin of a float export, calibrated on ``calibration``.

    Args:
        float_path: an ONNX file written by `export_onnx` (with or without post-processing).
        path: the ``.onnx`` file to write.
        calibration: uint8 (3, H, W) RGB images (any sizes; e.g.
            `singleshot.export.calibration.calibration_images`), preprocessed as the
            model's input (its size, mean and std, from the file's metadata); a hundred
            images of the deployment's kind are typical.
        float_layers: layers kept in float (see `float_layer_nodes`); default the first
            convolution.
        batch_size: calibration images per ONNX Runtime run.
        progress: a tqdm bar over the calibration images.

    The file has the float export's inputs, outputs and metadata, plus ``"int8"`` in the
    metadata: the float layers, the quantised operator types and the calibration count.
    Decoding and NMS, when the float file has them, stay float.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    if len(calibration) == 0:
        raise ValueError("no calibration images")
    float_layers = tuple(dict.fromkeys(float_layers))
    meta = _singleshot_metadata(Path(float_path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="singleshot-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with _quiet_quantizer():
            # ONNX's shape inference suffices (the exporter records every shape); ONNX
            # Runtime's symbolic one fails on the post-processing graph of SSD300
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        keep_float = set(float_layer_nodes(graph, float_layers))
        nodes = [name for name in network_nodes(graph) if name not in keep_float]
        std = meta.get("image_std")
        with tqdm(total=len(calibration), desc="calibrate", unit="img", disable=not progress) as bar:
            batches = ImageBatches(calibration, meta["image_size"], meta["image_mean"], std,
                                   graph.input[0].name, batch_size, progress=bar)  # fmt: skip
            _quantize(prepared, Path(tmp) / "int8.onnx", batches, nodes)
        quantized = onnx.load(str(Path(tmp) / "int8.onnx"))
    meta["int8"] = {
        "scheme": "ONNX Runtime QDQ: weights int8 per output channel, activations uint8 (min/max)",
        "float_layers": list(float_layers),
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration_images": len(calibration),
    }
    onnx.helper.set_model_props(quantized, {"singleshot": json.dumps(meta)})
    return atomic_write(path, lambda handle: handle.write(quantized.SerializeToString()))


def _singleshot_metadata(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others
        raise ValueError(f"{path}: not a loadable ONNX file: {error}") from None
    props = {entry.key: entry.value for entry in proto.metadata_props}
    if "singleshot" not in props:
        raise ValueError(f"{path}: not a singleshot export (no 'singleshot' metadata)")
    meta = json.loads(props["singleshot"])
    if "int8" in meta:
        raise ValueError(f"{path}: already quantised; give the float export")
    return meta


def _quantize(prepared: Path, out: Path, batches: ImageBatches, nodes: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet_quantizer():
        quantize_static(
            str(prepared),
            str(out),
            batches,  # the CalibrationDataReader protocol
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the root-logger advice ONNX Runtime's quantisation tools print while they run."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
