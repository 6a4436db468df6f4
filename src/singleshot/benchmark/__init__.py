"""How fast each way of deploying a model runs on this machine, and what it scores
(``singleshot benchmark``).

>>> from singleshot.benchmark import time_formats, score_formats, format_benchmark_table
>>> detectors = {"torch": model, "onnx": OnnxDetector("ssd.onnx", threads=2)}
>>> rows = time_formats(detectors, sample_images(8), batches=[1, 8], rounds=10)
>>> print(format_benchmark_table(rows, score_formats(detectors, dataset)))

`formats` makes the formats from a checkpoint or an exported file (`make_exports`), `measure`
times them stage by stage, in turns, and scores them, and `report` prints the table and
describes the machine.
"""

from .formats import (
    FORMATS,
    Exports,
    make_exports,
    needs_calibration,
    openvino_unavailable,
    plan_formats,
    source_kind,
)
from .measure import STAGES, dataset_images, image_batches, sample_images, score_formats, time_formats
from .report import busy_machine_note, environment, format_benchmark_table, spinning_threads_note

__all__ = [
    "FORMATS",
    "STAGES",
    "Exports",
    "busy_machine_note",
    "dataset_images",
    "environment",
    "format_benchmark_table",
    "image_batches",
    "make_exports",
    "needs_calibration",
    "openvino_unavailable",
    "plan_formats",
    "sample_images",
    "score_formats",
    "spinning_threads_note",
    "source_kind",
    "time_formats",
]
