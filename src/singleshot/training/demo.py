"""The end-to-end demo: synthetic VOC data on disk -> compact SSD trained on a CPU -> VOC07 mAP.

``singleshot demo --out runs/demo`` (``make demo``) writes into ``out``::

    data/                  the synthetic dataset in VOC layout (reused when its parameters match)
    last.pt, best.pt       checkpoints (`singleshot.load`)
    log.jsonl              every logged training step and the evaluation
    loss_curve.png         training losses and learning rate
    metrics.json           VOC07 mAP and per-class AP on the test split, training time
    pr_curves.png          precision-recall curve per class
    detections/*.png       held-out test images with their detections
    summary.txt            what is printed at the end

Every number comes from this run: the data is read back through `singleshot.data.open_dataset`,
the model is trained by `singleshot.training.train`, and evaluated by
`singleshot.evaluation.evaluate_model` on images it never saw.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..fileio import atomic_write_text
from .logging import format_duration, plot_losses
from .recipes import apply_overrides, apply_values, load_recipe
from .trainer import train

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models.ssd import SSD
    from .config import TrainConfig
    from .results import TrainResult

__all__ = ["DemoOptions", "DemoSummary", "run_demo", "prepare_data", "MAP_TARGET"]

MAP_TARGET = 0.90
DATA_DEFAULTS = {"num_train": 1200, "num_test": 300, "image_size": 160}
PICTURE_SCALE = 3  # detections are drawn on 3x upscaled images, so that captions stay legible


@dataclass
class DemoOptions:
    """What `run_demo` does; None = the default (data) or the recipe's value (training)."""

    out: str = "runs/demo"
    recipe: str = "demo_compact"
    iterations: int | None = None
    max_minutes: float | None = None
    num_train: int | None = None
    num_test: int | None = None
    image_size: int | None = None
    seed: int = 0
    workers: int | None = None
    num_pictures: int = 8
    overrides: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class DemoSummary:
    """Measured outcome of a demo run and where its outputs are."""

    out: Path
    map: float
    ap: dict[str, float]
    iterations: int
    train_seconds: float
    total_seconds: float
    stopped_by_budget: bool
    files: dict[str, Path]
    follows_clock_from: int | None = None

    def text(self) -> str:
        verdict = "reached" if self.map >= MAP_TARGET else "NOT reached"
        lines = [
            f"singleshot demo: VOC07 mAP {self.map:.4f} on the held-out test split "
            f"(target {MAP_TARGET:.2f}: {verdict})",
            f"  trained {self.iterations} iterations in {format_duration(self.train_seconds)}"
            + (" (stopped by the time budget)" if self.stopped_by_budget else "")
            + f"; whole demo {format_duration(self.total_seconds)}",
            "  AP per class: " + ", ".join(f"{name} {ap:.3f}" for name, ap in self.ap.items()),
        ]
        if self.follows_clock_from is not None:
            lines.insert(2, f"  the time budget bound: from iteration {self.follows_clock_from} the learning "
                         "rate followed the clock (this run depends on the machine's speed)")  # fmt: skip
        lines += [f"  {name:<12s} {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def prepare_data(out: Path, num_train: int, num_test: int, size: int, seed: int, progress: bool) -> Path:
    """Write the synthetic VOC dataset under ``out`` unless one with the same parameters is there."""
    from ..data.synthetic import write_dataset

    params = {"num_train": num_train, "num_test": num_test, "size": size, "seed": seed, "format": "voc"}
    marker = out / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    write_dataset(out, "voc", num_train, num_test, size=size, seed=seed, overwrite=True, progress=progress)
    atomic_write_text(marker, json.dumps(params))
    return out


def _clear_previous_outputs(out: Path) -> None:
    for name in ("last.pt", "best.pt", "log.jsonl", "metrics.json", "loss_curve.png", "pr_curves.png",
                 "summary.txt"):  # fmt: skip
        (out / name).unlink(missing_ok=True)
    for folder in ("detections", "tensorboard"):
        shutil.rmtree(out / folder, ignore_errors=True)


def draw_pictures(model: SSD, dataset: Any, out: Path, count: int) -> list[Path]:
    """Draw the detections (score >= 0.5) of the first ``count`` images of ``dataset`` into ``out``."""
    from ..transforms import resize_bilinear
    from ..visualize import draw_detections, save_image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        detection = model.predict(image, score_threshold=0.3)[0]
        height, width = image.shape[-2:]
        big = resize_bilinear(image, height * PICTURE_SCALE, width * PICTURE_SCALE)
        big = big.round().clamp(0, 255).to(torch.uint8)
        scaled = {**detection, "boxes": detection["boxes"] * PICTURE_SCALE}
        drawn = draw_detections(big, scaled, model.class_names, score_threshold=0.5)
        paths.append(save_image(drawn, out / f"{target['image_id']}.png"))
    return paths


def _config(options: DemoOptions, out: Path, data: Path) -> TrainConfig:
    """The recipe with the demo's paths, seed and the options the user gave, validated."""
    values: dict[str, Any] = {"out": str(out), "data": str(data), "seed": options.seed}
    for key in ("iterations", "max_minutes", "workers"):
        if getattr(options, key) is not None:
            values[key] = getattr(options, key)
    config = apply_overrides(apply_values(load_recipe(options.recipe), values), options.overrides)
    config.validate()
    return config


def _write_metrics(
    out: Path,
    data: Path,
    result: TrainResult,
    metrics: dict[str, Any],
    config: TrainConfig,
    train_set: Any,
    test_set: Any,
) -> None:
    """metrics.json in the schema of `singleshot.evaluation.report`, with the training's numbers."""
    from ..evaluation import write_metrics

    last = result.history[-1] if result.history else {}
    write_metrics(
        out / "metrics.json",
        metrics,
        train_set.classes,
        checkpoint=str(out / "last.pt"),
        data=str(data),
        split="test",
        num_test_images=len(test_set),
        num_train_images=len(train_set),
        model=config.model,
        iterations=result.iteration,
        train_seconds=result.elapsed_s,
        stopped_by_budget=result.stopped_by_budget,
        follows_clock_from=result.follows_clock_from,
        final_loss=last.get("loss"),
        threads=torch.get_num_threads(),
        config=config.to_dict(),
    )


def _plots(out: Path, metrics: dict[str, Any], classes: Sequence[str], model_name: str) -> dict[str, Path]:
    from ..evaluation import plot_pr_curves

    title = f"{model_name}, VOC07 mAP {metrics['map']:.3f}"
    return {
        "loss curve": plot_losses(out / "log.jsonl", out / "loss_curve.png"),
        "PR curves": plot_pr_curves(
            metrics["curves"], classes, out / "pr_curves.png", title=title, ap=metrics["ap"]
        ),
    }


def run_demo(options: DemoOptions) -> DemoSummary:
    """Run the whole demo (see the module docstring) and return its measured summary.

    Does not tune malloc (`singleshot.runtime.tune_malloc`): ``singleshot demo`` does at start-up.
    """
    from ..data import open_dataset

    start = time.perf_counter()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    num_train = options.num_train or DATA_DEFAULTS["num_train"]
    num_test = options.num_test or DATA_DEFAULTS["num_test"]
    size = options.image_size or DATA_DEFAULTS["image_size"]
    data = prepare_data(out / "data", num_train, num_test, size, options.seed, options.progress)
    train_set = open_dataset(data, format="voc", split="train")
    test_set = open_dataset(data, format="voc", split="test")
    config = _config(options, out, data)
    _clear_previous_outputs(out)
    result = train(config, train_set, test_set, progress=options.progress)
    metrics = result.metrics
    if metrics is None:
        raise ValueError(f"recipe {options.recipe!r}: the demo needs an evaluation split (val_split)")

    classes = train_set.classes
    ap = {classes[int(label)]: float(value) for label, value in sorted(metrics["ap"].items())}
    files = {"dataset": data, "checkpoint": out / "last.pt", "log": out / "log.jsonl"}
    files.update(_plots(out, metrics, classes, config.model))
    files["metrics"] = out / "metrics.json"
    if draw_pictures(result.model.eval(), test_set, out / "detections", options.num_pictures):
        files["detections"] = out / "detections"
    summary = DemoSummary(
        out=out,
        map=float(metrics["map"]),
        ap=ap,
        iterations=result.iteration,
        train_seconds=result.elapsed_s,
        total_seconds=time.perf_counter() - start,
        stopped_by_budget=result.stopped_by_budget,
        files=files,
        follows_clock_from=result.follows_clock_from,
    )
    _write_metrics(out, data, result, metrics, config, train_set, test_set)
    atomic_write_text(out / "summary.txt", summary.text() + "\n")
    return summary
