"""Detection metrics: PASCAL VOC AP (devkit rules), COCO AP (pycocotools), and their reports.

Example::

    from singleshot.evaluation import evaluate_voc
    result = evaluate_voc(detections, ground_truths)   # VOC2007 11-point AP
    result["map"], result["ap"]                        # mean, {label: AP}
"""

from .coco import (
    COCO_STAT_NAMES,
    build_coco_ground_truth,
    detections_to_coco_results,
    evaluate_coco,
    evaluate_coco_file,
    write_coco_results,
)
from .plots import class_name, format_table, plot_pr_curves
from .report import metrics_document, write_metrics
from .run import METRICS, evaluate_detections, evaluate_model
from .voc import VOC07_RECALL_THRESHOLDS, evaluate_voc, voc_ap

__all__ = [
    "COCO_STAT_NAMES",
    "METRICS",
    "VOC07_RECALL_THRESHOLDS",
    "build_coco_ground_truth",
    "class_name",
    "detections_to_coco_results",
    "evaluate_coco",
    "evaluate_coco_file",
    "evaluate_detections",
    "evaluate_model",
    "evaluate_voc",
    "format_table",
    "plot_pr_curves",
    "voc_ap",
    "write_coco_results",
    "metrics_document",
    "write_metrics",
]
