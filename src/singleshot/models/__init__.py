"""Network parts: VGG16 base, extra layers, multibox heads and the SSD module."""

from .extras import ExtraBlock, ExtraSpec, build_extras
from .heads import MultiBoxHead
from .ssd import SSD
from .vgg import L2Norm, VGG16Backbone

__all__ = ["SSD", "MultiBoxHead", "ExtraBlock", "ExtraSpec", "build_extras", "L2Norm", "VGG16Backbone"]
