"""What the benchmarks share: torchvision's SSD300 and ours with the same weights, and a
seeded batch of ground truth."""

from __future__ import annotations

import torch
from torchvision.models.detection import ssd300_vgg16

import singleshot
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.weights import convert

NUM_CLASSES = 21
# Added to the background logits of the confidence head: scores then look like a trained
# model's (a few hundred candidates per class); random weights would send ~100k through NMS.
BACKGROUND_BIAS = 7.0


def build_models(background_bias: float = BACKGROUND_BIAS):
    """(torchvision ``ssd300_vgg16(num_classes=21)``, our ``ssd300_coco`` with its weights).

    Ours uses 21 classes and ``prior_clip="size"`` (torchvision's default boxes), so both
    compute the same detections. Both in eval mode.
    """
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.bias.view(-1, NUM_CLASSES)[:, 0] += background_bias
    ours = singleshot.build_model("ssd300_coco", num_classes=NUM_CLASSES, prior_clip="size").eval()
    ours.load_state_dict(convert(tv.state_dict(), "torchvision"), strict=True)
    return tv, ours


def random_targets(batch: int, generator: torch.Generator, num_classes: int = NUM_CLASSES):
    """``batch`` targets of 1-6 boxes each: ``boxes`` (n, 4) xyxy as fractions, ``labels`` (n,)."""
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 7, (1,), generator=generator))
        centre = 0.2 + 0.6 * torch.rand(n, 2, generator=generator)
        size = 0.05 + 0.5 * torch.rand(n, 2, generator=generator)
        boxes = cxcywh_to_xyxy(torch.cat([centre, size], 1)).clamp(0, 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes, (n,), generator=generator)})
    return targets
