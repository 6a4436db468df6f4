"""One way to open what a user deploys: a checkpoint or an exported file, ready to predict.

>>> from singleshot.export import load_detector
>>> detector = load_detector("ssd.onnx")                       # ONNX Runtime
>>> detector = load_detector("ssd.onnx", runtime="openvino")   # the same file in OpenVINO
>>> detector = load_detector("ssd.xml")                        # OpenVINO IR (ssd.bin beside it)
>>> detector = load_detector("ssd_script.pt")                  # TorchScript, told apart by content
>>> detector = load_detector("best.pt")                        # a checkpoint: a singleshot.SSD
>>> detector.predict(["street.jpg"]), detector.class_names, detector.postprocess

Each is a `singleshot.detector.Detector`: the same ``predict`` and the same description
(``image_size``, ``num_classes``, ``class_names``, ``postprocess``), so ``singleshot eval``,
``detect`` and `singleshot.evaluation.evaluate_model` run any of them.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..detector import Detector

__all__ = ["FORMAT_RUNTIMES", "model_format", "load_detector", "runtime_of"]

# Each format's runtimes; the first is the default.
FORMAT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "checkpoint": ("torch",),
    "torchscript": ("torch",),
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
}
# runtime -> (the module it needs, the singleshot extra that installs it)
_PACKAGES = {"onnxruntime": ("onnxruntime", "export"), "openvino": ("openvino", "openvino")}


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose top folder holds ``code/`` (the scripted source).
    A checkpoint written by ``torch.save`` is a zip too, but of data only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def model_format(path: str | os.PathLike) -> str:
    """What ``path`` holds: "onnx" (``.onnx``), "openvino" (an IR's ``.xml``), "torchscript"
    (a TorchScript archive, whatever its suffix: ``.pt`` like a checkpoint, or ``.ts``), else
    "checkpoint" (a singleshot checkpoint, or whatever `singleshot.load` accepts)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".xml":
        return "openvino"
    if path.is_file() and _is_torchscript(path):
        return "torchscript"
    return "checkpoint"


def _require(runtime: str, path: Path) -> None:
    module, extra = _PACKAGES[runtime]
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"{path}: running it with {runtime} needs the '{module}' package, which is not installed: "
            f"pip install {module} (or pip install 'singleshot[{extra}]')"
        )


def _onnxruntime_providers(device: torch.device) -> list[Any]:
    """ONNX Runtime's execution providers for a torch device ("cpu", "cuda", "cuda:1")."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if device.type != "cuda" or "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(
            f"device {device}: this ONNX Runtime runs on {', '.join(ort.get_available_providers())} "
            "(for CUDA: pip install onnxruntime-gpu)"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def load_detector(
    path: str | os.PathLike,
    runtime: str | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> Detector:
    """A checkpoint or an exported file, ready to ``predict`` (see the module docstring).

    Args:
        path: a singleshot checkpoint (`singleshot.load`), an ONNX file (``.onnx``), an
            OpenVINO IR (``.xml``, its ``.bin`` beside it) or a TorchScript file, as
            ``singleshot export`` writes them (`model_format` tells them apart).
        runtime: for ONNX files "onnxruntime" (default) or "openvino"; other formats have
            one runtime each ("openvino" for ``.xml``, "torch" otherwise) and accept only it.
        device: where the model runs: a torch device for checkpoints and TorchScript; "cpu"
            or "cuda[:N]" (onnxruntime-gpu) for ONNX Runtime; "cpu" for OpenVINO.
        threads: inference threads of ONNX Runtime and OpenVINO (None = their default, all
            cores); PyTorch's are the process's (``torch.set_num_threads``).

    Returns:
        A `singleshot.SSD` for a checkpoint, else an `OnnxDetector`, `OpenVinoDetector` or
        `TorchScriptDetector` (their ``metadata`` is what the export stored).

    Raises:
        ValueError: a runtime the format does not run on, a missing runtime package (the
            message names it and its pip extra), a device the runtime does not offer, or a
            file that is not a singleshot export (the message names the file).
    """
    source, path, device = path, Path(path), torch.device(device)
    fmt = model_format(path)
    if path.suffix.lower() == ".bin":
        raise ValueError(f"{path}: OpenVINO IR weights; give the .xml file beside it")
    runtimes = FORMAT_RUNTIMES[fmt]
    runtime = runtime or runtimes[0]
    if runtime not in runtimes:
        raise ValueError(f"{path}: a {fmt} file runs with {' or '.join(runtimes)}, not {runtime}")
    if fmt == "checkpoint":
        from ..checkpoint import load

        return load(source, map_location=device)
    if fmt == "torchscript":
        from .runtime import TorchScriptDetector

        return TorchScriptDetector(path, device=device)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    _require(runtime, path)
    if runtime == "onnxruntime":
        from .runtime import OnnxDetector

        return OnnxDetector(path, threads=threads, providers=_onnxruntime_providers(device))
    if device.type != "cpu":
        raise ValueError(f"device {device}: OpenVINO runs {path} on the CPU here (device cpu)")
    from .openvino import OpenVinoDetector

    return OpenVinoDetector(path, threads=threads)


def runtime_of(model: Detector) -> str:
    """What runs ``model``: "torch" for a PyTorch model, else its runner's ``runtime``
    ("onnxruntime", "openvino", or "torch" for TorchScript)."""
    from .runtime import ExportedDetector

    return model.runtime if isinstance(model, ExportedDetector) else "torch"
