"""Faster CPU inference: VGG16's 3x3 convolutions by Winograd's F(4x4, 3x3).

    model = singleshot.load("ssd300_voc.pt")
    singleshot.winograd.use_winograd(model)   # in place; inference only
    detections = model.predict(images)

See `singleshot.winograd.conv` for the method and `singleshot.winograd.build` for how the
C tile transforms are compiled (once per machine, with its C compiler).
"""

from .build import KernelBuildError, load_kernels
from .conv import WinogradConv2d, is_winograd_eligible, transform_weight, use_winograd, winograd_conv3x3

__all__ = [
    "KernelBuildError",
    "WinogradConv2d",
    "is_winograd_eligible",
    "load_kernels",
    "transform_weight",
    "use_winograd",
    "winograd_conv3x3",
]
