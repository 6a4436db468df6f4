"""Measuring the formats: ms per image in three stages, and mAP.

`time_formats` times each detector's ``predict`` cut into its stages
(`singleshot.inference.prediction_stages`): pre-processing (resize and normalise decoded
uint8 images), the network, and post-processing (decoding, softmax, NMS, boxes to pixels).
All detectors run the same batches, taking turns round after round
(`singleshot.timing.time_in_turns`: each turn runs all batches in a row after a pause and
50 ms of untimed runs, so each detector is timed warm, as a deployment runs it, and a change in the
machine's load falls on all alike). Decoding image files is not timed.

`score_formats` evaluates each on a dataset as ``singleshot eval`` does
(`singleshot.evaluation.evaluate_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..timing import Laps, StageTimes, time_in_turns

if TYPE_CHECKING:
    from ..classes import ClassMatch
    from ..detector import Detector, PredictionStages

__all__ = ["STAGES", "sample_images", "dataset_images", "image_batches", "time_formats", "score_formats"]

STAGES = ("preprocess", "network", "postprocess")


def sample_images(count: int = 8, height: int = 375, width: int = 500, seed: int = 0) -> list[Tensor]:
    """``count`` smooth random images the size of a VOC photo, uint8 (3, height, width) RGB:
    noise blurred by upsampling, plus fine noise (what the timing runs on without ``--data``)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(height // 16, 1), max(width // 16, 1), generator=generator) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noisy = fine + torch.randn(count, 3, height, width, generator=generator) * 8
    return list(noisy.clamp(0, 255).to(torch.uint8))


def dataset_images(dataset: Any, count: int) -> list[Tensor]:
    """``count`` images of ``dataset`` (``ds[i] -> (uint8 (3, H, W), target)``), evenly spread."""
    from ..export.calibration import evenly_spaced

    return [dataset[i][0] for i in evenly_spaced(len(dataset), count)]


def image_batches(images: Sequence[Tensor], batch: int) -> list[list[Tensor]]:
    """Batches of ``batch`` images that together hold every image at least once
    (``ceil(len(images) / batch)`` batches, cycling through ``images`` to fill the last)."""
    count = -(-len(images) // batch)
    return [[images[(k * batch + i) % len(images)] for i in range(batch)] for k in range(count)]


def _staged_run(stages: PredictionStages) -> Callable[[list[Tensor], Laps], None]:
    def run(images: list[Tensor], laps: Laps) -> None:
        x = stages.preprocess(images)
        laps.lap("preprocess")
        outputs = stages.network(x)
        laps.lap("network")
        stages.postprocess(outputs, [(int(t.shape[-2]), int(t.shape[-1])) for t in images])
        laps.lap("postprocess")

    return run


def time_formats(
    detectors: Mapping[str, Detector],
    images: Sequence[Tensor],
    batches: Sequence[int],
    rounds: int,
    warmup: int = 2,
    after_round: Callable[[], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per (batch size, format): median ms per image of each stage and in all.

    For each batch size, every detector runs the same batches of ``images``
    (`image_batches`), taking turns (`singleshot.timing.time_in_turns`), for ``rounds``
    rounds after ``warmup`` untimed runs.

    Returns:
        Rows {"format", "batch", "preprocess_ms", "network_ms", "postprocess_ms" (each the
        median over rounds x batches of the stage's time / batch), "ms_per_image" (their
        sum), "images_per_s" (1000 / ms_per_image), "cpu_ms_per_image" (the same sum in CPU
        time, all threads), "network_includes_postprocess", "samples" (timed runs),
        "spread": {stage: {"min", "q1", "median", "q3", "max"}}}, batch sizes in the order
        given and formats in ``detectors``' order.
    """
    from ..inference import prediction_stages

    stages = {name: prediction_stages(detector) for name, detector in detectors.items()}
    rows = []
    for batch in batches:
        runs = [_staged_run(stage) for stage in stages.values()]
        times = time_in_turns(runs, image_batches(images, batch), rounds, warmup, after_round)
        for (name, stage), timed in zip(stages.items(), times):
            rows.append(_row(name, batch, timed, stage.network_includes_postprocess))
    return rows


def _row(name: str, batch: int, times: StageTimes, inside: bool) -> dict[str, Any]:
    medians = {stage: times.median(stage) for stage in STAGES}
    total = sum(medians.values())
    return {
        "format": name,
        "batch": batch,
        **{f"{stage}_ms": medians[stage] for stage in STAGES},
        "ms_per_image": total,
        "images_per_s": 1000.0 / total,
        "cpu_ms_per_image": sum(times.median(stage, cpu=True) for stage in STAGES),
        "network_includes_postprocess": inside,
        "samples": len(times.wall["network"]),
        "spread": {stage: times.spread(stage) for stage in STAGES},
    }


def score_formats(
    detectors: Mapping[str, Detector],
    dataset: Any,
    metric: str = "voc07",
    classes: ClassMatch | None = None,
    batch_size: int = 8,
    progress: bool = True,
    say: Callable[[str], object] | None = None,
) -> dict[str, float]:
    """{format: mAP (0-1)} of each detector on ``dataset``, as ``singleshot eval`` scores it
    (`singleshot.evaluation.evaluate_model`: the model's own post-processing settings).
    ``say`` is told which format is being scored."""
    from ..evaluation import evaluate_model

    maps = {}
    for name, detector in detectors.items():
        if say is not None:
            say(f"scoring {name} ({metric})")
        result = evaluate_model(detector, dataset, metric, batch_size, progress=progress, classes=classes)
        maps[name] = float(result["map"])
    return maps
