"""The deployment formats ``singleshot benchmark`` compares, made from what the user gives.

- ``torch``: the checkpoint run by PyTorch as ``singleshot detect`` and ``eval`` run it
  (the command opens it; a TorchScript file runs as itself);
- ``onnx``: the float ONNX file with decoding and NMS inside, in ONNX Runtime;
- ``openvino``: that ONNX file as OpenVINO IR, in OpenVINO's CPU plugin;
- ``int8``: that ONNX file statically quantised (`singleshot.export.quantize_onnx`), in
  ONNX Runtime.

From a checkpoint (or published weights by name) every format can be made. From an exported
file, those the file can become: a float ``.onnx`` gives onnx, openvino and int8; an int8
``.onnx`` gives int8; an IR (``.xml``) gives openvino; TorchScript gives torch.
`plan_formats` says which of those asked cannot be made, and why; `make_exports` writes
and opens the others.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor

    from ..detector import Detector
    from ..models.ssd import SSD

__all__ = ["FORMATS", "Exports", "source_kind", "plan_formats", "needs_calibration", "openvino_unavailable",
           "make_exports"]  # fmt: skip

FORMATS = ("torch", "onnx", "openvino", "int8")

# what each kind of source can become
_MADE_FROM = {
    "checkpoint": set(FORMATS),
    "torchscript": {"torch"},
    "onnx": {"onnx", "openvino", "int8"},
    "onnx-int8": {"int8"},
    "openvino": {"openvino"},
}
_WHY_NOT = {
    "torchscript": "a TorchScript file runs in PyTorch only (the torch row); give the checkpoint for others",
    "onnx": "an exported file holds no PyTorch model; give the checkpoint it was exported from",
    "onnx-int8": "already int8 (the int8 row runs it); give the float ONNX file or the checkpoint",
    "openvino": "an OpenVINO IR runs in OpenVINO only (the openvino row); give the checkpoint or ONNX file",
}


class Exports(NamedTuple):
    """The exported formats, ready to time: {format: value}, in `FORMATS` order.

    Attributes:
        detectors: the runners (`singleshot.export.OnnxDetector`, `OpenVinoDetector`).
        files: the file each runs.
        notes: how each file was made, in a few words.
    """

    detectors: dict[str, Detector]
    files: dict[str, Path]
    notes: dict[str, str]


def source_kind(path: str | os.PathLike) -> str:
    """What the benchmark's source is: "checkpoint" (or published weights by name),
    "torchscript", "onnx" (float), "onnx-int8" or "openvino" (an IR's ``.xml``).

    Raises:
        ValueError: an ``.onnx`` file that is not a singleshot export (the message names it).
    """
    from ..export import model_format

    kind = model_format(path)
    if kind == "onnx" and "int8" in _onnx_metadata(Path(path)):
        return "onnx-int8"
    return kind


def _onnx_metadata(path: Path) -> dict[str, Any]:
    from ..export import OnnxDetector

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return OnnxDetector(path, threads=1).metadata


def openvino_unavailable() -> str | None:
    """Why OpenVINO cannot run here, or None when it can: the package is missing, or oneDNN
    is held below SSE4.2 (``DNNL_MAX_CPU_ISA=SSE41``), which OpenVINO's CPU plugin refuses."""
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install 'singleshot[openvino]')"
    isa = os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA") or ""
    if isa.upper() in ("SSE41", "SSE4_1"):
        return f"OpenVINO's CPU plugin needs SSE4.2 or later; DNNL_MAX_CPU_ISA={isa} holds oneDNN below it"
    return None


def needs_calibration(kind: str, formats: Sequence[str]) -> bool:
    """Whether making ``formats`` from a source of ``kind`` quantises (and so calibrates)."""
    return "int8" in formats and kind in ("checkpoint", "onnx")


def plan_formats(kind: str, asked: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the formats of ``asked`` to run, {format: why it is left out}) for a source of ``kind``.

    Raises:
        ValueError: an unknown format name, or one asked twice.
    """
    unknown = [name for name in asked if name not in FORMATS]
    if unknown or not asked or len(set(asked)) != len(asked):
        raise ValueError(
            f"--formats {','.join(asked)}: give distinct names among {', '.join(FORMATS)}, comma-separated"
        )
    run, left_out = [], {}
    for name in asked:
        if name not in _MADE_FROM[kind]:
            left_out[name] = _WHY_NOT[kind]
        elif name == "openvino" and openvino_unavailable():
            left_out[name] = str(openvino_unavailable())
        else:
            run.append(name)
    return run, left_out


def make_exports(
    source: str | os.PathLike | SSD,
    formats: Sequence[str],
    folder: Path,
    threads: int,
    calibration: tuple[Sequence[Tensor], str] | None = None,
    progress: bool = True,
    say: Callable[[str], object] = print,
) -> Exports:
    """Write the files of ``formats`` (any of onnx, openvino, int8) into ``folder`` and open them.

    Args:
        source: a `singleshot.SSD` (exported with decoding and NMS inside, with its own
            post-processing settings), or a file singleshot exported (see `source_kind`),
            used as it is for its own format and converted or quantised for the others.
        folder: where the files go (``model.onnx``, ``model.xml`` + ``.bin``, ``model.int8.onnx``).
        threads: the runtimes' inference threads.
        calibration: (uint8 (3, H, W) RGB images, where they come from): what int8 is
            calibrated on when it is made by quantising (see `needs_calibration`).
        progress: a progress bar over the calibration images.
        say: what each step is told to (a line per file written).
    """
    from ..export import OnnxDetector, OpenVinoDetector

    folder.mkdir(parents=True, exist_ok=True)
    files, notes = _write_files(source, formats, folder, calibration, progress, say)
    wanted = [name for name in FORMATS if name in formats]
    detectors: dict[str, Detector] = {}
    for name in wanted:
        if name == "openvino":
            detectors[name] = OpenVinoDetector(files[name], threads=threads)
        else:  # the session settings a deployment gets; the formats are timed in turns
            detectors[name] = OnnxDetector(files[name], threads=threads)
    return Exports(detectors, {name: files[name] for name in wanted}, {name: notes[name] for name in wanted})


def _write_files(
    source: str | os.PathLike | SSD,
    formats: Sequence[str],
    folder: Path,
    calibration: tuple[Sequence[Tensor], str] | None,
    progress: bool,
    say: Callable[[str], object],
) -> tuple[dict[str, Path], dict[str, str]]:
    """({format: file}, {format: how it was made}) for ``formats``, written as `make_exports` says."""
    from ..export import export_onnx, onnx_to_openvino, quantize_onnx

    files: dict[str, Path] = {}
    notes: dict[str, str] = {}
    if isinstance(source, (str, os.PathLike)):
        given = Path(source)
        own = {"onnx": "onnx", "onnx-int8": "int8", "openvino": "openvino"}[source_kind(given)]
        files[own], notes[own] = given, "the file given"
    else:
        say(f"exporting to ONNX with decoding and NMS inside: {folder / 'model.onnx'}")
        files["onnx"] = export_onnx(source, folder / "model.onnx", with_postprocess=True)
        notes["onnx"] = "exported with decoding and NMS inside (the model's post-processing settings)"
    float_onnx = files.get("onnx")
    if "openvino" in formats and float_onnx is not None:
        say(f"converting to OpenVINO IR: {folder / 'model.xml'}")
        files["openvino"] = onnx_to_openvino(float_onnx, folder / "model.xml")
        notes["openvino"] = f"{float_onnx.name} converted to OpenVINO IR (float32)"
    if "int8" in formats and float_onnx is not None:
        if calibration is None:
            raise ValueError("int8 is made by quantising the float ONNX file: give calibration images")
        images, where = calibration
        say(f"quantising to int8: {folder / 'model.int8.onnx'}, calibrating on {len(images)} images")
        files["int8"] = quantize_onnx(float_onnx, folder / "model.int8.onnx", images, progress=progress)
        notes["int8"] = (
            f"{float_onnx.name} quantised (ONNX Runtime QDQ, first convolution float), calibrated on "
            f"{len(images)} images of {where}"
        )
    return files, notes
