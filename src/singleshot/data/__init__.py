"""Detection data: dataset readers (VOC, COCO, YOLO), a synthetic dataset, augmentation.

>>> from singleshot.data import open_dataset
>>> ds = open_dataset("data/synth", split="train")     # format detected from the layout
>>> ds = open_coco("photos/", "instances.json")         # COCO files in no particular layout
>>> image, target = ds[0]      # uint8 (3, H, W) RGB; target["boxes"] xyxy pixels, ["labels"] 1..C-1

Every reader validates all annotations when it is opened (see `singleshot.data.validation`)
and reads images in stored pixel order (EXIF orientation is not applied).
"""

from .augment import EvalTransform, SSDAugmentation
from .coco import COCODataset
from .collate import collate
from .common import (
    BACKGROUND,
    DetectionConcat,
    DetectionDataset,
    read_class_names,
    read_class_names_without_background,
)
from .layouts import LAYOUTS, Layout, detect_layout
from .registry import FORMATS, describe_layout, detect_format, list_splits, open_coco, open_dataset
from .voc import VOC_CLASSES, VOCDataset, voc_trainval_07_12
from .yolo import YOLODataset

__all__ = [
    "BACKGROUND",
    "COCODataset",
    "DetectionConcat",
    "DetectionDataset",
    "EvalTransform",
    "FORMATS",
    "LAYOUTS",
    "Layout",
    "SSDAugmentation",
    "VOCDataset",
    "VOC_CLASSES",
    "YOLODataset",
    "collate",
    "describe_layout",
    "detect_format",
    "detect_layout",
    "list_splits",
    "open_coco",
    "open_dataset",
    "read_class_names",
    "read_class_names_without_background",
    "voc_trainval_07_12",
]
