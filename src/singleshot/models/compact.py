"""A light BatchNorm backbone for SSD that trains in minutes on a CPU.

Same detector design as the VGG presets (two backbone sources, extra layers,
multibox heads, default boxes); only the base network is small: plain 3x3
conv + BatchNorm + ReLU stages, stride 2 at the start of each.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .init import he_normal_convs, reset_batch_norms

__all__ = ["CompactBackbone"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class CompactBackbone(nn.Module):
    """x (B, 3, S, S) -> [(B, widths[-2], S/8, S/8), (B, widths[-1], S/16, S/16)].

    Args:
        widths: channels of the five stages (strides 2, 2, 2, 2, 2 from the input).

    A backbone part (see `singleshot.models.spec`): ``part_name`` "compact".
    """

    part_name = "compact"

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 192)) -> None:
        super().__init__()
        w1, w2, w3, w4, w5 = widths
        self.widths = tuple(int(w) for w in widths)
        self.to_stride8 = nn.Sequential(
            _conv_bn(3, w1, 2),
            _conv_bn(w1, w2, 2),
            _conv_bn(w2, w2),
            _conv_bn(w2, w3, 2),
            _conv_bn(w3, w3),
            _conv_bn(w3, w4),
        )
        self.to_stride16 = nn.Sequential(_conv_bn(w4, w5, 2), _conv_bn(w5, w5))
        self.out_channels = (w4, w5)

    def config(self) -> dict:
        """Constructor keyword arguments, as plain data."""
        return {"widths": list(self.widths)}

    def reset_parameters(self) -> None:
        """He-normal convolutions; BatchNorm at weight 1, bias 0, fresh statistics."""
        he_normal_convs(self)
        reset_batch_norms(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        stride8 = self.to_stride8(x)
        return [stride8, self.to_stride16(stride8)]
