"""OpenVINO IR export: singleshot's ONNX graph through OpenVINO's own converter.

`export_openvino` exports the model to ONNX (`export_onnx`, in a temporary folder) and
`onnx_to_openvino` converts that file with OpenVINO's ONNX frontend and writes the IR
with ``openvino.save_model``: ``NAME.xml`` (the graph) and ``NAME.bin`` (the weights,
float32 unless asked otherwise). Any ONNX file singleshot wrote converts the same way,
float or quantised (QuantizeLinear / DequantizeLinear pairs become OpenVINO's
FakeQuantize). The singleshot metadata (classes, input size, mean and std,
post-processing) travels in the IR's runtime info under ``"singleshot"``, where
`singleshot.export.OpenVinoDetector` reads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .openvino import METADATA_KEY, openvino_core, read_metadata
from .to_onnx import DEFAULT_OPSET, export_onnx

if TYPE_CHECKING:
    from ..models.ssd import SSD

__all__ = ["export_openvino", "onnx_to_openvino"]


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ValueError(
            "OpenVINO IR export needs the 'openvino' package, which is not installed: "
            "pip install openvino (or pip install 'singleshot[openvino]')"
        ) from None
    return openvino


def _ir_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"{path}: an OpenVINO IR file name ends in .xml (the weights go beside it, in .bin)")
    return path


def onnx_to_openvino(
    onnx_path: str | os.PathLike, path: str | os.PathLike, compress_to_fp16: bool = False
) -> Path:
    """Convert an ONNX file written by singleshot (float, or int8 with QDQ nodes) to OpenVINO IR.

    Args:
        onnx_path: the ``.onnx`` file (with its ``"singleshot"`` metadata).
        path: the ``.xml`` file to write; the weights go beside it, in ``.bin``.
        compress_to_fp16: store float weights as float16 (half the size; OpenVINO computes
            in float32 on CPUs without bfloat16, but the weights are rounded once).

    Returns:
        ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.xml``; OpenVINO cannot convert the file;
            the file is not a singleshot export.
    """
    ov = _openvino()
    onnx_path, path = Path(onnx_path), _ir_path(path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such file")
    try:
        # the Core's ONNX frontend, not ``ov.convert_model``: importing the converter tool
        # starts OpenVINO's telemetry, which forks the calling process to send a usage event
        model = openvino_core().read_model(str(onnx_path))
    except Exception as error:  # OpenVINO's converter raises its own exception types
        raise ValueError(f"{onnx_path}: OpenVINO cannot convert it: {error}") from None
    metadata = read_metadata(model, onnx_path)
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    _save_ir(ov, model, path, compress_to_fp16)
    return path


def _save_ir(ov: Any, model: Any, path: Path, compress_to_fp16: bool) -> None:
    """``ov.save_model`` into a scratch folder beside ``path``, then both files renamed into
    place: a failed write (a full disk) leaves no partial IR and the previous one as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as scratch:
        staged = Path(scratch) / path.name
        try:
            ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        except RuntimeError as error:  # OpenVINO reports a failed write as "iostream error"
            raise OSError(f"{path}: OpenVINO could not write the IR: {error}") from None
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)


def export_openvino(
    model: SSD | str | os.PathLike,
    path: str | os.PathLike,
    with_postprocess: bool = False,
    opset: int = DEFAULT_OPSET,
    compress_to_fp16: bool = False,
    **postprocess: Any,
) -> Path:
    """Write an SSD, or an ONNX file singleshot exported, as OpenVINO IR (``.xml`` + ``.bin``).

    Args:
        model: a `singleshot.SSD`, exported to ONNX first (as `export_onnx` does, with
            ``with_postprocess``, ``opset`` and ``postprocess``); or the path of an ONNX
            file singleshot wrote, converted as it is (its graph and settings are fixed, so
            ``with_postprocess`` and ``postprocess`` must be left out).
        path: the ``.xml`` file to write.
        compress_to_fp16: as in `onnx_to_openvino`.

    The IR's inputs and outputs are the ONNX graph's: ``images`` float32 (B, 3, S, S) ->
    ``loc``, ``conf``, or with post-processing ``boxes``, ``scores``, ``labels``, ``counts``
    (see `singleshot.export.export_onnx`).
    """
    _ir_path(path)  # both checked before the export's work
    _openvino()
    if isinstance(model, (str, os.PathLike)):
        if with_postprocess or postprocess:
            raise ValueError(
                f"{model}: an ONNX file converts as it is; its post-processing was set at export"
            )
        return onnx_to_openvino(model, path, compress_to_fp16)
    with tempfile.TemporaryDirectory(prefix="singleshot-openvino-") as folder:
        onnx_path = export_onnx(
            model, Path(folder) / "model.onnx", with_postprocess=with_postprocess, opset=opset, **postprocess
        )
        return onnx_to_openvino(onnx_path, path, compress_to_fp16)
