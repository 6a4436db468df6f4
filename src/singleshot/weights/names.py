"""Class-name lists of the datasets whose published weights `singleshot convert` reads.

Index 0 is always ``"__background__"``, matching the label convention (0 = background).
"""

from __future__ import annotations

from ..data.common import BACKGROUND
from ..data.voc import VOC_CLASSES

__all__ = ["VOC_CLASSES_WITH_BACKGROUND", "coco_names_91", "coco_names_81", "default_class_names"]

# The 21 names of a VOC model: "__background__", then the 20 object classes of `singleshot.data.voc`.
VOC_CLASSES_WITH_BACKGROUND: tuple[str, ...] = (BACKGROUND, *VOC_CLASSES)


def coco_names_91() -> list[str]:
    """torchvision's sparse COCO layout: index = COCO category id, unused ids named "N/A"."""
    from torchvision.models.detection import SSD300_VGG16_Weights

    return list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])


def coco_names_81() -> list[str]:
    """The 80 COCO categories in category-id order, after ``"__background__"`` (ssd.pytorch's layout)."""
    return [name for name in coco_names_91() if name != "N/A"]


def default_class_names(num_classes: int, dataset: str) -> list[str] | None:
    """Names for a converted model: VOC's for 21 classes, COCO's for 81 or 91, else None."""
    if num_classes == 21 and dataset == "voc":
        return list(VOC_CLASSES_WITH_BACKGROUND)
    if num_classes == 81 and dataset == "coco":
        return coco_names_81()
    if num_classes == 91 and dataset == "coco":
        return coco_names_91()
    return None
