"""COCO box AP through pycocotools, and detections in the COCO results format.

Two entry points share one evaluation:

- `evaluate_coco`: ground truths held in memory (singleshot targets); a COCO object is
  built from them in memory, no temporary files.
- `evaluate_coco_file`: the official annotation JSON (or a loaded ``pycocotools.coco.COCO``)
  and the ids of the images that were detected, so that crowd regions and segment areas
  come from the file exactly as in the COCO benchmark.

Detections are turned into COCO results ([x, y, w, h] boxes, the dataset's original
category ids); `write_coco_results` saves them as the JSON list the COCO server and
pycocotools read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..categories import category_lookup, coco_results, plain_id
from ..fileio import atomic_write_text
from .plots import class_name

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = [
    "COCO_STAT_NAMES",
    "detections_to_coco_results",
    "write_coco_results",
    "build_coco_ground_truth",
    "evaluate_coco",
    "evaluate_coco_file",
]

# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[Any],
    label_to_category_id: Mapping[int, int] | None = None,
    decimals: int | None = None,
) -> list[dict[str, Any]]:
    """Detections -> COCO results: a list of {"image_id", "category_id", "bbox", "score"}.

    Args:
        detections: one dict per image: ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,),
            ``labels`` (N,) int.
        image_ids: the dataset's id of each image (same order as ``detections``).
        label_to_category_id: {label: original category id} (COCO's ids are sparse:
            1..90 for 80 classes); None keeps the labels as category ids.
        decimals: round boxes to this many decimals and scores to this many + 2
            (smaller files); None keeps full precision.

    Returns:
        One dict per detection, ``bbox`` = [x1, y1, x2 - x1, y2 - y1] in pixels.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} images of detections but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for index, (det, image_id) in enumerate(zip(detections, image_ids)):
        what = f"detections of image {index}"
        results.extend(coco_results(det, image_id, label_to_category_id, decimals=decimals, what=what))
    return results


def write_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[Any],
    label_to_category_id: Mapping[int, int] | None,
    path: str | os.PathLike,
    decimals: int | None = 3,
) -> Path:
    """Save detections as a COCO results JSON file (see `detections_to_coco_results`)."""
    results = detections_to_coco_results(detections, image_ids, label_to_category_id, decimals=decimals)
    path = Path(path)
    return atomic_write_text(path, json.dumps(results))


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """pycocotools prints progress on stdout; keep it unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _coco_from_dataset(dataset: dict[str, Any]) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _image_annotations(
    index: int,
    target: Mapping[str, Any],
    image_id: Any,
    label_to_category_id: Mapping[int, int] | None,
    annotations: list[dict[str, Any]],
) -> np.ndarray:
    """Append image ``index``'s COCO annotations (bbox [x, y, w, h] pixels, ids numbered on
    from ``annotations``) to ``annotations``; return its labels (M,) int64."""
    boxes = _numpy(target["boxes"], np.float64).reshape(-1, 4)
    labels = _numpy(target["labels"], np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"ground truth of image {index}: {len(boxes)} boxes but {len(labels)} labels")
    crowd = _numpy(target.get("difficult", np.zeros(len(boxes))), bool).reshape(-1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    area = target.get("area")
    area = xywh[:, 2] * xywh[:, 3] if area is None else _numpy(area, np.float64).reshape(-1)
    categories = category_lookup(label_to_category_id, labels)
    for box, category, is_crowd, box_area in zip(xywh.tolist(), categories.tolist(), crowd, area.tolist()):
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": box,
                "area": box_area,
                "iscrowd": int(is_crowd),
            }
        )
    return labels


def build_coco_ground_truth(
    ground_truths: Sequence[Mapping[str, Any]],
    image_ids: Sequence[Any] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    label_to_category_id: Mapping[int, int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> COCO:
    """A ``pycocotools.coco.COCO`` built in memory from singleshot targets.

    Args:
        ground_truths: one dict per image: ``boxes`` (M, 4) xyxy pixels, ``labels`` (M,),
            optionally ``difficult`` (M,) bool (becomes COCO's ``iscrowd``: such a region
            is neither counted nor penalised, and may absorb several detections) and
            ``area`` (M,) (COCO's area-range test uses the segment area; default: box area).
        image_ids: ids for the images (default 0..n-1).
        image_sizes: (height, width) per image; default each target's ``size`` if given, else 0.
        label_to_category_id: {label: category id}; None = the labels themselves.
        class_names: names by label (a list indexed by label, index 0 = background, or a mapping).
    """
    if image_ids is None:
        image_ids = list(range(len(ground_truths)))
    if len(image_ids) != len(ground_truths):
        raise ValueError(f"{len(ground_truths)} ground truths but {len(image_ids)} image ids")
    if image_sizes is not None and len(image_sizes) != len(ground_truths):
        raise ValueError(f"{len(ground_truths)} ground truths but {len(image_sizes)} image sizes")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    labels_seen: set[int] = set()
    for index, target in enumerate(ground_truths):
        image_id = plain_id(image_ids[index])
        size = image_sizes[index] if image_sizes is not None else target.get("size", (0, 0))
        height, width = (int(v) for v in _numpy(size, np.int64).reshape(2))
        images.append({"id": image_id, "height": height, "width": width})
        labels = _image_annotations(index, target, image_id, label_to_category_id, annotations)
        labels_seen.update(labels.tolist())
    if label_to_category_id is not None:
        label_of = {int(v): int(k) for k, v in label_to_category_id.items()}
    else:
        label_of = {label: label for label in labels_seen}
    categories = [
        {"id": category, "name": class_name(class_names, label)}
        for category, label in sorted(label_of.items())
    ]
    with _quiet(False):
        return _coco_from_dataset({"images": images, "annotations": annotations, "categories": categories})


def _results_coco(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """The results as a COCO object, the way ``COCO.loadRes`` prepares boxes (also when empty)."""
    known = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(unknown, key=str)[:5]}")
    annotations = [
        {**r, "area": r["bbox"][2] * r["bbox"][3], "id": k + 1, "iscrowd": 0} for k, r in enumerate(results)
    ]
    dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": annotations,
    }
    return _coco_from_dataset(dataset)


def _nan_if_undefined(value: float) -> float:
    return float("nan") if value < 0 else float(value)  # pycocotools writes -1 for "no ground truth"


def _run_cocoeval(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[Any],
    label_to_category_id: Mapping[int, int] | None,
    verbose: bool,
) -> dict[str, Any]:
    from pycocotools.cocoeval import COCOeval

    with _quiet(verbose):
        coco_dt = _results_coco(coco_gt, results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(dict.fromkeys(plain_id(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    stats = [_nan_if_undefined(v) for v in evaluator.stats.tolist()]
    result: dict[str, Any] = dict(zip(COCO_STAT_NAMES, stats))
    result["stats"] = stats
    result["map"] = result["AP"]
    if label_to_category_id is not None:
        label_of = {int(v): int(k) for k, v in label_to_category_id.items()}
    else:
        label_of = {int(c): int(c) for c in evaluator.params.catIds}

    # precision: (IoU thresholds T, recall points R, categories K, area ranges A, max dets M)
    precision = evaluator.eval["precision"]
    recall_points = np.asarray(evaluator.params.recThrs, dtype=np.float64)
    iou_thresholds = np.asarray(evaluator.params.iouThrs)
    at_50 = int(np.argmin(np.abs(iou_thresholds - 0.5)))
    at_75 = int(np.argmin(np.abs(iou_thresholds - 0.75)))
    result["per_class"], result["ap"], result["curves"] = {}, {}, {}
    for k, category in enumerate(evaluator.params.catIds):
        label = label_of.get(int(category))
        if label is None:
            continue
        p = precision[:, :, k, 0, -1]  # area "all", 100 detections per image
        if not (p > -1).any():
            continue  # no ground truth of this class among the evaluated images
        per_class = {
            "category_id": int(category),
            "AP": float(np.mean(p[p > -1])),
            "AP50": _mean_defined(p[at_50]),
            "AP75": _mean_defined(p[at_75]),
        }
        result["per_class"][label] = per_class
        result["ap"][label] = per_class["AP"]
        result["curves"][label] = {"recall": recall_points.copy(), "precision": np.clip(p[at_50], 0.0, None)}
    result["metric"] = "coco"
    return result


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else float("nan")


def evaluate_coco(
    detections: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    label_to_category_id: Mapping[int, int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO box AP of detections against in-memory ground truths (pycocotools' COCOeval).

    Args:
        detections: one dict per image: ``boxes`` (N, 4) xyxy pixels, ``scores``, ``labels``.
        ground_truths: one dict per image, same order: ``boxes`` (M, 4) xyxy pixels,
            ``labels``, optional ``difficult`` (treated as COCO crowd regions) and ``area``;
            see `build_coco_ground_truth`.
        image_sizes: (height, width) per image (default: each target's ``size``); COCOeval
            does not use them for boxes, they only fill the image records.
        label_to_category_id: {label: category id} for the category ids in the COCO
            objects and in ``per_class``; None = the labels themselves.
        class_names: names by label, for the category records.
        verbose: let pycocotools print its progress and summary.

    Returns:
        ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
        ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``; ``stats``: those 12 in
        COCOeval.summarize's order; ``map`` = ``AP``; ``per_class``: {label: {"category_id",
        "AP", "AP50", "AP75"}}; ``ap``: {label: AP}; ``curves``: {label: {"recall" (101,),
        "precision" (101,)}} at IoU 0.5 (COCO's interpolated precision); ``metric`` =
        "coco". Undefined values (no ground truth in a range) are nan; classes without
        ground truth are left out of the per-class entries.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth")
    image_ids = list(range(len(ground_truths)))
    coco_gt = build_coco_ground_truth(
        ground_truths, image_ids, image_sizes, label_to_category_id, class_names
    )
    results = detections_to_coco_results(detections, image_ids, label_to_category_id)
    return _run_cocoeval(coco_gt, results, image_ids, label_to_category_id, verbose)


def evaluate_coco_file(
    detections: Sequence[Mapping[str, Any]],
    annotation_file: str | os.PathLike | Any,
    image_ids: Sequence[Any],
    label_to_category_id: Mapping[int, int] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO box AP against an annotation file, over the images ``image_ids`` only.

    Args:
        detections: one dict per image of ``image_ids``: ``boxes`` (N, 4) xyxy pixels,
            ``scores``, ``labels``.
        annotation_file: path of a COCO instances JSON, or a loaded ``pycocotools.coco.COCO``.
        image_ids: the file's id of each detected image (same order as ``detections``).
        label_to_category_id: {label: the file's category id}; None = labels are category ids.
        verbose: let pycocotools print its progress and summary.

    Returns:
        As `evaluate_coco`.
    """
    if isinstance(annotation_file, (str, os.PathLike)):
        path = Path(annotation_file)
        if not path.is_file():
            raise ValueError(f"{path}: no such annotation file")
        from pycocotools.coco import COCO

        try:
            with _quiet(verbose):
                coco_gt = COCO(str(path))
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a COCO annotation file ({error})") from None
    else:
        coco_gt = annotation_file
    missing = {plain_id(i) for i in image_ids} - set(coco_gt.getImgIds())
    if missing:
        raise ValueError(f"image ids not in the annotation file: {sorted(missing, key=str)[:5]}")
    results = detections_to_coco_results(detections, image_ids, label_to_category_id)
    return _run_cocoeval(coco_gt, results, image_ids, label_to_category_id, verbose)
