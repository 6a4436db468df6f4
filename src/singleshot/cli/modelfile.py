"""The model that ``eval`` and ``detect`` run: a checkpoint or an exported file.

Checkpoints run in PyTorch as `singleshot.SSD.optimize_for_inference`'s copy, with the
``--fast`` / ``--winograd`` conversions (and detect's ``--half``) as asked; exported files
(ONNX, OpenVINO IR, TorchScript) run as they were exported, in the runtime ``--runtime``
picks for ONNX files (`singleshot.export.load_detector`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..detector import Detector
    from ..models.ssd import SSD

MODEL_HELP = (
    "a singleshot checkpoint (.pt or .safetensors) or a file `singleshot export` wrote: ONNX (.onnx), "
    "OpenVINO IR (.xml, its .bin beside it) or TorchScript (told apart from a checkpoint by its "
    "content); an exported file brings its classes, input size, mean and std, and post-processing; "
    "or published weights by name (e.g. ssd300_vgg16_coco, downloaded once and verified; "
    "`singleshot models` lists them)"
)


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino"),
        default=None,
        help="what runs an ONNX file: onnxruntime (default) or openvino (pip install "
        "'singleshot[openvino]'); an OpenVINO IR (.xml) runs in openvino, TorchScript and checkpoints "
        "in PyTorch",
    )


def open_model(
    path: str | os.PathLike,
    device: str | torch.device,
    runtime: str | None = None,
    fast: bool | None = None,
    winograd: bool | None = None,
    half: bool = False,
    batch_size: int = 8,
) -> Detector:
    """The model at ``path`` ready to run as the command's options ask.

    A checkpoint is loaded on ``device`` and run as `SSD.optimize_for_inference`'s copy:
    ``--fast`` / ``--winograd`` (their default: on for the CPU in float32) and ``half``
    (float16) passed on, the memory format from a trial at ``batch_size``; a note on stderr
    says when Winograd fell back to direct convolutions and what a new trial measured. An
    exported file runs as exported: ``fast`` or ``winograd`` set to True, or ``half``, is an
    error; ``runtime`` applies to ONNX files only.
    """
    from ..checkpoint import load
    from ..export import load_detector, model_format

    fmt = model_format(path)
    if fmt != "checkpoint":
        asked = [flag for flag, on in (("--fast", fast), ("--winograd", winograd), ("--half", half)) if on]
        if asked:
            raise ValueError(
                f"{' and '.join(asked)}: for checkpoints only; {path} is an exported file ({fmt}), "
                "which runs as it was exported"
            )
        return load_detector(path, runtime=runtime, device=device)
    if runtime is not None:
        raise ValueError(f"--runtime {runtime}: for ONNX files only; {path} is a checkpoint, run by PyTorch")
    return optimized(load(path, map_location=device), fast, winograd, half, batch_size)


def optimized(model: SSD, fast: bool | None, winograd: bool | None, half: bool, batch_size: int) -> SSD:
    """``model.optimize_for_inference`` as the command's flags ask, its notes on stderr."""
    import torch

    from ..optimize import WinogradUnavailableWarning
    from ..winograd import KernelBuildError

    device = next(model.parameters()).device
    if winograd and device.type != "cpu":
        raise ValueError("--winograd is for the CPU (on a GPU, cuDNN chooses its own algorithms)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WinogradUnavailableWarning)  # a note below instead
            runnable = model.optimize_for_inference(
                fuse=fast, winograd=winograd, batch_size=batch_size, dtype=torch.float16 if half else None
            )
    except KernelBuildError as error:
        raise ValueError(f"--winograd: {error}") from None
    report = runnable.optimizations
    assert report is not None  # set on every copy
    if report.winograd_fallback is not None:
        print(f"note: direct convolutions ({report.winograd_fallback})", file=sys.stderr)
    if report.layout.source == "measured":
        print(f"note: memory format {report.layout.describe()}", file=sys.stderr)
    return runnable


def detect_threshold(model: Detector, threshold: float) -> float:
    """``detect --threshold`` for ``model``: ``threshold``, or the score threshold built into
    an exported graph with NMS inside when that is higher (with a note: the graph outputs
    nothing below it)."""
    from ..export import ExportedDetector

    if not isinstance(model, ExportedDetector) or not model.with_postprocess:
        return threshold
    built = model.postprocess.score_threshold
    if threshold >= built:
        return threshold
    print(
        f"note: {model.path} has NMS inside, built with score threshold {built}: it outputs no "
        f"detection scoring {threshold} to {built}; keeping those above {built}",
        file=sys.stderr,
    )
    return built


def eval_score_threshold(model: Detector, given: float | None) -> float:
    """``eval --score-threshold`` for ``model``: ``given``, or the model's own (an exported
    graph's built-in one). Refuses one below a graph's built-in threshold; notes when that
    is above the exported model's own, since mAP then counts fewer detections than the
    checkpoint's evaluation does.

    Raises:
        ValueError: a threshold the graph cannot apply (the message names the file).
    """
    from ..export import ExportedDetector

    if given is None:
        given = model.postprocess.score_threshold
        if isinstance(model, ExportedDetector) and given > model.model_postprocess.score_threshold:
            own = model.model_postprocess.score_threshold
            print(
                f"note: {model.path} has NMS inside, built with score threshold {given} (its model's "
                f"own is {own}): mAP counts only detections above {given}, so it reads lower than the "
                f"checkpoint's; export with --score-threshold {own} to compare",
                file=sys.stderr,
            )
    if isinstance(model, ExportedDetector):
        model.settings(score_threshold=given)  # a threshold the graph cannot apply: ValueError
    return given
