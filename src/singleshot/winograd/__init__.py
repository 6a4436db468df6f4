"""Faster CPU inference: VGG16's 3x3 convolutions by Winograd's F(4x4, 3x3).

    model = singleshot.load("ssd300_voc.pt")
    singleshot.winograd.use_winograd(model)   # in place; inference only
    detections = model.predict(images)
    singleshot.winograd.revert_winograd(model)  # plain nn.Conv2d again, same parameters

An optional accelerator: `singleshot.winograd.conv` has the method,
`singleshot.winograd.ops` the operator ``torch.ops.singleshot.winograd_conv3x3`` around
the C kernels (tile transforms and products), `singleshot.winograd.build` and `singleshot.winograd.cache` how
they are compiled (once per machine, with its C compiler; ``singleshot build-kernels``)
and cached, `singleshot.winograd.module` the model conversion and its undoing, and
`singleshot.winograd.schedule` the timed choice of each convolution's tile schedule.
"""

from .build import KernelBuildError, build_kernels, load_kernels
from .cache import cache_dir, clear_kernels, list_kernels
from .conv import pack_filters, panel_width, transform_weight, winograd_conv3x3
from .module import (
    FusedMaxPool2d,
    FusedReLU,
    WinogradConv2d,
    fusable_pool,
    is_winograd_eligible,
    revert_winograd,
    use_winograd,
)

__all__ = [
    "FusedMaxPool2d",
    "FusedReLU",
    "KernelBuildError",
    "WinogradConv2d",
    "build_kernels",
    "cache_dir",
    "clear_kernels",
    "fusable_pool",
    "is_winograd_eligible",
    "list_kernels",
    "load_kernels",
    "pack_filters",
    "panel_width",
    "revert_winograd",
    "transform_weight",
    "use_winograd",
    "winograd_conv3x3",
]
