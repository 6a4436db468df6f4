"""Weights from elsewhere: ssd.pytorch and torchvision detectors (SSD300, SSDLite), ImageNet VGG16
and MobileNetV3-Large.

>>> from singleshot import weights
>>> ours = weights.convert(torch.load("ssd300_mAP_77.43_v2.pth", weights_only=True), "ssd.pytorch")
>>> model = weights.convert_model(tv_model.state_dict(), "torchvision")    # ready, eval mode
>>> model = weights.convert_file("ssd300_mAP_77.43_v2.pth", "ssd.pytorch")   # errors name the file
>>> weights.load_vgg16_backbone(model, "vgg16_reducedfc.pth")   # or torchvision's vgg16-397923af.pth
>>> weights.load_backbone(ssdlite, "mobilenet_v3_large-8738ca79.pth")   # by the model's backbone
>>> reduced = weights.reduce_vgg16(torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict())

Published weights by name (`singleshot models` lists them; downloaded once, verified, cached):

>>> weights.published("ssd300_vgg16_coco").metric            # the registry: url, hash, licence...
>>> weights.published_checkpoint("ssd300_vgg16_coco")        # the converted checkpoint's path
>>> weights.load_backbone(model, weights.backbone_file("mobilenet_v3_large_imagenet"))

All file reading uses ``torch.load(..., weights_only=True)`` (or safetensors when the
``safetensors`` package is installed): weight files are data, never code.
"""

from .build import convert_file, model_from_vgg16, read_class_names_with_background, reduced_vgg16_backbone
from .convert import SOURCES, convert, convert_model, infer_model_args, to_source
from .download import ChecksumError, DownloadError, fetch
from .io import read_state_dict
from .mobilenet import load_backbone, load_mobilenet_v3_backbone
from .names import VOC_CLASSES_WITH_BACKGROUND, coco_names_81, coco_names_91
from .published import backbone_file, published_checkpoint
from .registry import REGISTRY, Metric, PublishedWeights, published, published_names
from .vgg16 import backbone_state_dict, load_vgg16_backbone, reduce_vgg16

__all__ = [
    "convert_file",
    "model_from_vgg16",
    "reduced_vgg16_backbone",
    "read_class_names_with_background",
    "SOURCES",
    "convert",
    "convert_model",
    "infer_model_args",
    "to_source",
    "reduce_vgg16",
    "load_vgg16_backbone",
    "backbone_state_dict",
    "load_mobilenet_v3_backbone",
    "load_backbone",
    "read_state_dict",
    "VOC_CLASSES_WITH_BACKGROUND",
    "coco_names_81",
    "coco_names_91",
    "REGISTRY",
    "Metric",
    "PublishedWeights",
    "published",
    "published_names",
    "published_checkpoint",
    "backbone_file",
    "fetch",
    "DownloadError",
    "ChecksumError",
]
