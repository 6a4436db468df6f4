"""Reports of an evaluation: precision-recall curves as a PNG, a per-class text table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write

__all__ = ["plot_pr_curves", "format_table", "class_name"]

ClassNames = Sequence[str] | Mapping[int, str] | None


def class_name(class_names: ClassNames, label: int) -> str:
    """The name of ``label``: ``class_names`` is a list indexed by label (index 0 =
    background), a {label: name} mapping, or None (then "class <label>")."""
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, f"class {label}"))
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def plot_pr_curves(
    curves: Mapping[int, Mapping[str, Any]],
    class_names: ClassNames,
    path: str | os.PathLike,
    title: str = "Precision-recall",
    ap: Mapping[int, float] | None = None,
) -> Path:
    """Draw every class's precision-recall curve in one PNG.

    Args:
        curves: {label: {"recall": (K,), "precision": (K,)}} (arrays or tensors), as in
            the ``curves`` entry of `evaluate_voc` / `evaluate_coco`.
        class_names: names by label (see `class_name`).
        path: the PNG to write (folders are created).
        title: figure title.
        ap: optional {label: AP}, shown in the legend.

    Returns:
        ``path``. Uses matplotlib's Agg canvas directly, so it never opens a window and
        leaves pyplot's global backend alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = sorted(curves)
    columns = 1 if len(labels) <= 20 else math.ceil(len(labels) / 30)
    figure = Figure(figsize=(8 + 2.5 * columns, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colours = _colours(len(labels))
    for index, label in enumerate(labels):
        recall = _array(curves[label]["recall"])
        precision = _array(curves[label]["precision"])
        if recall.shape != precision.shape:
            raise ValueError(f"class {label}: {recall.shape} recall values but {precision.shape} precision")
        name = class_name(class_names, label)
        if ap is not None and label in ap:
            name = f"{name} ({ap[label]:.3f})"
        # Start each curve at recall 0 so a class with a single point is still visible.
        recall = np.concatenate(([0.0], recall))
        precision = np.concatenate(([precision[0] if len(precision) else 0.0], precision))
        axes.plot(recall, precision, color=colours[index], linewidth=1.2, label=name)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if labels:
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncol=columns, frameon=False)
    figure.tight_layout()
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / max(count - 1, 1)) for i in range(count)]


def format_table(result: Mapping[str, Any], class_names: ClassNames = None) -> str:
    """A per-class text table of an evaluation result, mean last.

    VOC results (`evaluate_voc`) give columns AP, ground truths (non-difficult),
    detections and true positives; COCO results (`evaluate_coco`) give AP (0.50:0.95),
    AP50 and AP75 per class, then the 12 summary numbers. APs are percentages.
    """
    if "per_class" in result:
        return _coco_table(result, class_names)
    ap = result["ap"]
    width = max([len(class_name(class_names, label)) for label in ap] + [5])
    header = f"{'class':<{width}}  {'AP':>6}  {'GT':>6}  {'dets':>7}  {'TP':>6}"
    lines = [header, "-" * len(header)]
    for label in sorted(ap):
        lines.append(
            f"{class_name(class_names, label):<{width}}  {100 * ap[label]:6.2f}  "
            f"{result.get('num_ground_truth', {}).get(label, 0):>6}  "
            f"{result.get('num_detections', {}).get(label, 0):>7}  "
            f"{result.get('true_positives', {}).get(label, 0):>6}"
        )
    lines.append("-" * len(header))
    metric = result.get("metric", "voc")
    lines.append(
        f"{'mAP':<{width}}  {100 * result['map']:6.2f}  ({metric}, IoU >= {result.get('iou_threshold', 0.5)})"
    )
    return "\n".join(lines)


def _coco_table(result: Mapping[str, Any], class_names: ClassNames) -> str:
    per_class = result["per_class"]
    width = max([len(class_name(class_names, label)) for label in per_class] + [5])
    header = f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}"
    lines = [header, "-" * len(header)]
    for label in sorted(per_class):
        row = per_class[label]
        lines.append(
            f"{class_name(class_names, label):<{width}}  {100 * row['AP']:6.2f}  "
            f"{100 * row['AP50']:6.2f}  {100 * row['AP75']:6.2f}"
        )
    lines.append("-" * len(header))
    means = "  ".join(f"{100 * result[name]:6.2f}" for name in ("AP", "AP50", "AP75"))
    lines.append(f"{'mean':<{width}}  {means}")
    summary = ", ".join(
        f"{name} {100 * result[name]:.2f}" for name in ("APs", "APm", "APl", "AR1", "AR10", "AR100")
    )
    lines.append(summary)
    return "\n".join(lines)
