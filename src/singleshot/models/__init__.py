"""Network parts (VGG16 and compact backbones, extra layers, multibox heads), the SSD
module, and the description of a model as data (`SSDSpec`, `build_ssd`, `describe`)."""

from .build import build_ssd, describe
from .compact import CompactBackbone
from .extras import ExtraBlock, ExtraSpec, SSDExtras, build_extras
from .heads import MultiBoxHead
from .spec import Part, PostprocessConfig, SSDSpec, part_name
from .ssd import SSD
from .vgg import L2Norm, VGG16Backbone

__all__ = [
    "SSD",
    "MultiBoxHead",
    "ExtraBlock",
    "ExtraSpec",
    "SSDExtras",
    "build_extras",
    "L2Norm",
    "VGG16Backbone",
    "CompactBackbone",
    "Part",
    "PostprocessConfig",
    "SSDSpec",
    "part_name",
    "build_ssd",
    "describe",
]
