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


SSDLITE_CLASSES = 91  # torchvision's COCO layout
# He-scaled weights carry a signal through MobileNetV3's depth (torchvision's N(0, 0.03)
# initialisation gives near-constant logits); the class head scaled by SSDLITE_CONF_SCALE with
# SSDLITE_BACKGROUND_BIAS on the background logit then sends ~22k candidates per image over
# score 0.001 (~240 per class): a trained model's load on post-processing.
SSDLITE_CONF_SCALE = 0.5
SSDLITE_BACKGROUND_BIAS = 10.0


def build_ssdlite_models():
    """(torchvision ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``, our
    ``ssdlite320_coco`` with 91 classes and its converted weights), both in eval mode."""
    import math

    from torch import nn
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
        for block in tv.head.classification_head.module_list:
            block[1].weight.mul_(SSDLITE_CONF_SCALE)
            block[1].bias.view(-1, SSDLITE_CLASSES)[:, 0] += SSDLITE_BACKGROUND_BIAS
        for block in tv.head.regression_head.module_list:
            block[1].weight.mul_(0.1)
    ours = singleshot.build_model("ssdlite320_coco", num_classes=SSDLITE_CLASSES).eval()
    ours.load_state_dict(convert(tv.state_dict(), "torchvision"), strict=True)
    return tv, ours
