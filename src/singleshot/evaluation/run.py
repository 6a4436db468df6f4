"""Evaluate a model on a dataset: batched inference, then the chosen metric.

Used by ``singleshot eval`` and by the trainer's periodic evaluation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from ..classes import ClassMatch, load_class_map, match_classes
from ..data.transfer import pack_samples, unpack_samples
from ..inference import predict
from ..models.spec import MODEL_DEFAULT
from .coco import evaluate_coco, evaluate_coco_file
from .voc import evaluate_voc

if TYPE_CHECKING:
    from ..detector import Detector

__all__ = ["METRICS", "COCOCategories", "COCOFileSource", "NamedClasses", "evaluate_model",
           "evaluate_detections", "model_classes", "shard_batches"]  # fmt: skip

METRICS = ("voc07", "voc12", "coco")


@runtime_checkable
class NamedClasses(Protocol):
    """A dataset that names its labels: ``classes[label]`` (index 0 = "__background__")."""

    classes: Sequence[str]


@runtime_checkable
class COCOCategories(Protocol):
    """A dataset whose labels have COCO category ids: ``label_to_category_id`` {label: id}."""

    label_to_category_id: Mapping[int, int]


@runtime_checkable
class COCOFileSource(COCOCategories, Protocol):
    """A dataset read from a COCO annotation file (`singleshot.data.COCODataset`): COCO
    scores can then use the file itself (its crowd regions, segment areas and ids)."""

    annotation_file: str | os.PathLike


def _attribute(dataset: Any, protocol: type, name: str) -> Any:
    """``dataset.<name>`` when ``dataset`` follows ``protocol``; None otherwise (or when it is None)."""
    return getattr(dataset, name) if isinstance(dataset, protocol) else None


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def evaluate_detections(
    detections: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    metric: str = "voc07",
    dataset: Any = None,
    classes: ClassMatch | None = None,
) -> dict[str, Any]:
    """Score detections against targets with ``metric`` ("voc07", "voc12" or "coco").

    Args:
        detections: per image {"boxes" (N, 4) xyxy pixels, "scores", "labels"}; labels are
            the dataset's, or the model's when ``classes`` relates the two.
        targets: per image {"boxes" (M, 4) xyxy pixels, "labels", "difficult", and for
            COCO "image_id", "size" (H, W), optionally "area"}.
        dataset: for COCO: a `COCOFileSource` (with every target's ``image_id``) is scored
            against its annotation file (its crowd regions and segment areas, as in the COCO
            benchmark, with the file's own category ids); otherwise against ``targets``,
            with the ids of a `COCOCategories` and the names of a `NamedClasses` dataset.
        classes: `singleshot.classes.match_classes` of the model and the dataset: detection
            labels are turned into dataset labels (by name) before scoring.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if classes is not None:
        detections = classes.detections_to_dataset(detections)
    if metric != "coco":
        return evaluate_voc(
            detections, targets, iou_threshold=0.5, use_07_metric=metric == "voc07", inclusive_boxes=False
        )
    annotation_file = _attribute(dataset, COCOFileSource, "annotation_file")
    label_to_category_id = _attribute(dataset, COCOCategories, "label_to_category_id")
    image_ids = [target.get("image_id") for target in targets]
    if annotation_file is not None and label_to_category_id is not None and None not in image_ids:
        return evaluate_coco_file(detections, annotation_file, image_ids, label_to_category_id)
    return evaluate_coco(
        detections,
        targets,
        label_to_category_id=label_to_category_id,
        class_names=_attribute(dataset, NamedClasses, "classes"),
    )


def model_classes(
    model: Any, dataset: Any, class_map: Mapping[str, str] | str | os.PathLike | None = None
) -> ClassMatch:
    """`match_classes` of ``model.class_names`` (None if absent) and ``dataset.classes``."""
    return match_classes(
        getattr(model, "class_names", None),
        dataset.classes,
        load_class_map(class_map),
        model_count=getattr(model, "num_classes", None),
    )


def evaluate_model(
    model: Detector,
    dataset: Any,
    metric: str = "voc07",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    num_workers: int = 0,
    score_threshold: float = MODEL_DEFAULT,
    nms_threshold: float = MODEL_DEFAULT,
    pre_nms_top_k: int = MODEL_DEFAULT,
    max_detections: int | None = MODEL_DEFAULT,
    class_map: Mapping[str, str] | str | os.PathLike | None = None,
    classes: ClassMatch | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Run ``model`` over every image of ``dataset`` and score the detections.

    Args:
        model: a singleshot `SSD`, or an exported file's runner (any `singleshot.detector.Detector`,
            e.g. from `singleshot.export.load_detector`).
        dataset: ``ds[i] -> (image uint8 (3, H, W) RGB, target)`` with target {"boxes" (M, 4)
            xyxy pixels, "labels", "difficult", ...}, and ``len(ds)``; no transforms (images
            are resized here, exactly as `SSD.predict` does).
        metric: "voc07" (11-point), "voc12" (area) or "coco" (pycocotools).
        batch_size: images per forward pass.
        device: where a PyTorch model runs (it is moved there); an exported file's runner
            runs where it was loaded.
        progress: show a tqdm bar.
        num_workers: DataLoader worker processes that read and decode images.
        score_threshold, nms_threshold, pre_nms_top_k, max_detections: as in `SSD.predict`;
            left out, ``model.postprocess``'s (evaluation keeps low scores: the VGG presets'
            are the paper's 0.01 and 200). A graph with NMS inside takes only a higher
            score threshold than it was exported with (ValueError otherwise).
        class_map: {dataset class name: model class name} or a YAML/JSON file of it, for
            classes named differently (see `singleshot.classes.match_classes`).
        classes: the model-dataset relation already computed (then ``class_map`` is unused
            and no note is printed).
        distributed: share the work among the processes of torch.distributed's default
            process group (DDP under torchrun; without one this changes nothing). Every
            process calls this with the same arguments and runs the model on its share of
            the batches (batch i goes to rank i mod world size, so each image is in the
            same batch as in one process); rank 0 gathers the detections in dataset order
            and scores them; every process returns that result: the metric of one process.

    Classes are related by name (``model.class_names`` and ``dataset.classes``): the same
    names in another order are mapped, with one note on stderr; other names raise ValueError.

    Returns:
        The metric's result (see `evaluate_voc`, `evaluate_coco`), plus ``num_images``.
        The model's train/eval mode is restored afterwards.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    group = _process_group() if distributed else None
    rank, world_size = group or (0, 1)
    if classes is None and _attribute(dataset, NamedClasses, "classes") is not None:
        classes = model_classes(model, dataset, class_map)
        if classes.note and rank == 0:
            print(f"note: {classes.note}", file=sys.stderr)
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    options = {"score_threshold": score_threshold, "nms_threshold": nms_threshold,
               "pre_nms_top_k": pre_nms_top_k, "max_detections": max_detections}  # fmt: skip
    indices = shard_batches(len(dataset), batch_size, rank, world_size)
    detections, targets = _run_model(
        model, Subset(dataset, indices), batch_size, num_workers, options, f"eval ({metric})",
        progress and rank == 0,
    )  # fmt: skip
    if group is None:
        return _score(detections, targets, metric, dataset, classes)
    gathered = _gather_in_order(detections, targets, indices, world_size)
    result = [_score(*gathered, metric, dataset, classes) if gathered is not None else None]
    dist.broadcast_object_list(result, src=0)
    assert result[0] is not None
    return result[0]


def shard_batches(count: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Indices of the images process ``rank`` of ``world_size`` evaluates, in order: the
    batches of ``batch_size`` images (the last may be short) dealt in turn, batch i to rank
    i mod world_size."""
    starts = range(rank * batch_size, count, world_size * batch_size)
    return [index for start in starts for index in range(start, min(start + batch_size, count))]


def _process_group() -> tuple[int, int] | None:
    """(rank, world size) of the default process group; None without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _score(
    detections: list[dict[str, Any]], targets: list[dict[str, Any]], metric: str, dataset: Any,
    classes: ClassMatch | None,
) -> dict[str, Any]:  # fmt: skip
    result = evaluate_detections(detections, targets, metric, dataset, classes)
    result["num_images"] = len(targets)
    return result


def _gather_in_order(
    detections: list[dict[str, Any]], targets: list[dict[str, Any]], indices: list[int], world_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Every process's (detections, targets) on rank 0, in dataset order; None elsewhere."""
    on_host = [{key: value.cpu() for key, value in det.items()} for det in detections]
    parts: list[Any] | None = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object((indices, on_host, targets), parts, dst=0)
    if parts is None:
        return None
    by_index = {i: (det, target) for part in parts for i, det, target in zip(*part)}
    ordered = [by_index[i] for i in sorted(by_index)]
    return [det for det, _ in ordered], [target for _, target in ordered]


def _run_model(
    model: Detector,
    dataset: Any,
    batch_size: int,
    num_workers: int,
    options: dict[str, Any],
    desc: str,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(detections, targets) of every image of ``dataset``, in order; targets gain ``size`` (H, W)."""
    from tqdm import tqdm

    # workers send each batch in few tensors: one shared-memory file per tensor is slow to receive
    collate = pack_samples if num_workers > 0 else _as_list
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    detections: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress) as bar:
        for received in loader:
            batch = unpack_samples(received) if num_workers > 0 else received
            # plain dicts: a `Detections` keeps its image, and a dataset's worth would stay in memory
            detections.extend(dict(d) for d in predict(model, [image for image, _ in batch], **options))
            for image, target in batch:
                target = dict(target)
                target.setdefault("size", tuple(image.shape[-2:]))
                targets.append(target)
            bar.update(len(batch))
    return detections, targets
