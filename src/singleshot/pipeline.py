"""Detection over image files in batches, one result per file, reading ahead where that pays.

>>> from singleshot.pipeline import predict_files
>>> for item in predict_files(model, ["a.jpg", "b.png"], score_threshold=0.3):
...     item.path, item.detections      # detections as `SSD.predict` returns them

``singleshot detect`` is this loop plus drawing and the COCO results file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from .imageio import read_image
from .inference import predict
from .models.spec import MODEL_DEFAULT
from .results import Detections

if TYPE_CHECKING:
    from .detector import Detector

__all__ = ["FilePrediction", "predict_files", "reads_ahead_by_default"]


class FilePrediction(NamedTuple):
    """One file's outcome: either ``image`` and ``detections``, or ``error``.

    Attributes:
        path: the file, as given.
        image: its pixels, uint8 (3, H, W) RGB; None when it could not be read.
        detections: `singleshot.results.Detections` ({"boxes" (N, 4) xyxy pixels of the
            image, "scores" (N,), "labels" (N,)}, knowing the image and its path), as
            `SSD.predict`; None when the file could not be read.
        error: why the file could not be read (the message names it); None when it was.
    """

    path: Path
    image: Tensor | None
    detections: Detections | None
    error: str | None


def _read(path: Path) -> tuple[Tensor | None, str | None]:
    try:
        return read_image(path), None
    except ValueError as error:  # read_image's errors name the file
        return None, str(error)


def _read_all(paths: Sequence[Path]) -> list[tuple[Tensor | None, str | None]]:
    return [_read(path) for path in paths]


def _predict_batch(
    model: Detector,
    paths: Sequence[Path],
    reads: Sequence[tuple[Tensor | None, str | None]],
    predict_options: dict[str, Any],
) -> list[FilePrediction]:
    good = [(path, image) for path, (image, _) in zip(paths, reads) if image is not None]
    results = iter(predict(model, [image for _, image in good], **predict_options) if good else [])
    batch: list[FilePrediction] = []
    for path, (image, error) in zip(paths, reads):
        detections = next(results) if image is not None else None
        if detections is not None:
            detections.path = path
        batch.append(FilePrediction(path, image, detections, error))
    return batch


def reads_ahead_by_default(model: Detector) -> bool:
    """Whether `predict_files` decodes the next batch in a thread while ``model`` runs: yes,
    unless PyTorch runs the model on the CPU (a checkpoint, or a TorchScript export).

    There the decoding thread takes a core from PyTorch's OpenMP threads, whose every
    parallel region then waits for the one preempted: on 2 cores the demo checkpoint took
    6.80 ms per image reading ahead against 4.52 without, SSD300 177 against 162 ms. ONNX
    Runtime's threads share out their work as they come free, and gain from the overlap
    (the demo's int8 file 1.82 against 2.17 ms; benchmarks/README.md).
    """
    from .export.load import runtime_of

    if runtime_of(model) != "torch":
        return True
    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    else:
        device = torch.device(getattr(model, "device", "cpu"))
    return device.type != "cpu"


def predict_files(
    model: Detector,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 8,
    prefetch: bool | None = None,
    score_threshold: float = MODEL_DEFAULT,
    nms_threshold: float = MODEL_DEFAULT,
    pre_nms_top_k: int = MODEL_DEFAULT,
    max_detections: int | None = MODEL_DEFAULT,
) -> Iterator[FilePrediction]:
    """Run ``model.predict`` over image files, ``batch_size`` images per forward pass.

    ``model``: a `singleshot.SSD` or an exported file's runner (`singleshot.export.load_detector`).

    Yields one `FilePrediction` per path, in order. A file that cannot be read (missing,
    corrupt, not an image) yields its error instead of stopping the run. With ``prefetch``
    the next batch is decoded in a thread while the current one runs through the model;
    None (the default) = `reads_ahead_by_default`.
    Each image's detections equal ``predict(model, image, ...)`` up to the kernels' summation
    order in another batch size. Settings left out come from ``model.postprocess``.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = [Path(path) for path in paths]
    batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    options: dict[str, Any] = {
        "score_threshold": score_threshold,
        "nms_threshold": nms_threshold,
        "pre_nms_top_k": pre_nms_top_k,
        "max_detections": max_detections,
    }
    if not batches:
        return
    if prefetch is None:
        prefetch = reads_ahead_by_default(model)
    if not prefetch:
        for batch in batches:
            yield from _predict_batch(model, batch, _read_all(batch), options)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_read_all, batches[0])
        for index, batch in enumerate(batches):
            reads = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(_read_all, batches[index + 1])
            yield from _predict_batch(model, batch, reads, options)
