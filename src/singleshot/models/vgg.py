"""The VGG16 base network of SSD (paper section 3, "Base network").

VGG16's conv1_1 ... conv5_3 with pool3 in ceil mode (75 -> 38 at 300 px) so that
conv4_3 is 38x38, pool5 changed to 3x3 stride 1, and fc6/fc7 turned into a dilated
3x3 conv6 (1024 channels, dilation 6) and a 1x1 conv7 (1024). conv4_3's output is
L2-normalised per position and rescaled by a learnable per-channel weight (init 20),
as in ParseNet, because its scale differs from the deeper layers'.

Parameter names are readable (``backbone.to_conv4_3.conv4_3.weight``); `singleshot.weights`
maps the numbered keys of ssd.pytorch and torchvision to them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_normal_convs

__all__ = ["L2Norm", "VGG16Backbone", "VGG16_LAYERS"]

# (name, in, out) of the 3x3 convolutions, with "pool" marking 2x2 max pools.
VGG16_LAYERS: tuple = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool1",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool2",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), "pool3",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), "pool4",
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)  # fmt: skip


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels with a learnable per-channel scale.

    (B, C, H, W) -> (B, C, H, W): ``weight[c] * x[:, c] / max(||x[:, :, h, w]||, eps)``,
    computed in float32 whatever the input's dtype (in float16, eps = 1e-10 rounds to 0 and
    an all-zero position would give 0 / 0), and returned in the input's dtype.

    ``is_norm``: the optimizer puts its scale in the "norm" parameter group.
    """

    is_norm = True

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps
        self.scale = scale

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return F.normalize(x, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)
        y = F.normalize(x.float(), dim=1, eps=self.eps) * self.weight.float().view(1, -1, 1, 1)
        return y.to(x.dtype)


def _vgg_sequence(layers: Sequence[str | tuple[str, int, int]]) -> list[tuple[str, nn.Module]]:
    modules: list[tuple[str, nn.Module]] = []
    for layer in layers:
        if layer == "pool3":
            # ceil mode: 75x75 -> 38x38 at 300 px (Caffe's pooling rounds up).
            modules.append((layer, nn.MaxPool2d(2, 2, ceil_mode=True)))
        elif isinstance(layer, str):
            modules.append((layer, nn.MaxPool2d(2, 2)))
        else:
            name, cin, cout = layer
            modules.append((name, nn.Conv2d(cin, cout, 3, padding=1)))
            modules.append((name.replace("conv", "relu"), nn.ReLU(inplace=True)))
    return modules


class VGG16Backbone(nn.Module):
    """VGG16 with SSD's changes; returns the two backbone sources.

    forward: x (B, 3, S, S) -> [conv4_3 L2-normalised (B, 512, S/8, S/8) rounded up,
    conv7 (B, 1024, S/16, S/16) rounded up] (38 and 19 at S = 300; 64 and 32 at 512).

    A backbone part (see `singleshot.models.spec`): ``part_name`` "vgg16", no settings.
    """

    part_name = "vgg16"
    out_channels = (512, 1024)

    def __init__(self) -> None:
        super().__init__()
        split = VGG16_LAYERS.index("pool4")
        self.to_conv4_3 = nn.Sequential(OrderedDict(_vgg_sequence(VGG16_LAYERS[:split])))
        self.l2norm = L2Norm(512, scale=20.0)
        upper = _vgg_sequence(VGG16_LAYERS[split:])
        upper += [
            ("pool5", nn.MaxPool2d(3, stride=1, padding=1)),
            ("conv6", nn.Conv2d(512, 1024, 3, padding=6, dilation=6)),
            ("relu6", nn.ReLU(inplace=True)),
            ("conv7", nn.Conv2d(1024, 1024, 1)),
            ("relu7", nn.ReLU(inplace=True)),
        ]
        self.to_conv7 = nn.Sequential(OrderedDict(upper))

    def config(self) -> dict:
        """Constructor keyword arguments (none: the layout is fixed)."""
        return {}

    def reset_parameters(self) -> None:
        """He-normal convolutions with zero biases, the conv4_3 scale back to 20; ready to be
        overwritten by ImageNet weights (`singleshot.weights`)."""
        he_normal_convs(self)
        self.l2norm.reset_parameters()

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3 = self.to_conv4_3(x)
        conv7 = self.to_conv7(conv4_3)
        return [self.l2norm(conv4_3), conv7]
