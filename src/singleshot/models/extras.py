"""The extra feature layers that SSD adds after the base network (paper Fig. 2).

Each block is a 1x1 convolution that reduces the channels, then a 3x3 (or 4x4)
convolution that shrinks the grid; its output is one more source for the heads.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

__all__ = ["ExtraSpec", "ExtraBlock", "build_extras", "SSD300_EXTRAS", "SSD512_EXTRAS"]


@dataclass(frozen=True)
class ExtraSpec:
    """One extra block: ``in -> mid`` (1x1), ``mid -> out`` (kernel x kernel, stride, padding)."""

    mid_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 2
    padding: int = 1


# SSD300: 19 -> 10 -> 5 -> 3 -> 1 (the last two without padding).
SSD300_EXTRAS = (
    ExtraSpec(256, 512, 3, 2, 1),
    ExtraSpec(128, 256, 3, 2, 1),
    ExtraSpec(128, 256, 3, 1, 0),
    ExtraSpec(128, 256, 3, 1, 0),
)
# SSD512: 32 -> 16 -> 8 -> 4 -> 2 with stride 2, then a 4x4 conv with padding 1: 2 -> 1.
SSD512_EXTRAS = (
    ExtraSpec(256, 512, 3, 2, 1),
    ExtraSpec(128, 256, 3, 2, 1),
    ExtraSpec(128, 256, 3, 2, 1),
    ExtraSpec(128, 256, 3, 2, 1),
    ExtraSpec(128, 256, 4, 1, 1),
)


class ExtraBlock(nn.Sequential):
    """(B, in, H, W) -> (B, out, H', W'): 1x1 ``reduce`` + ReLU, then ``conv`` + ReLU.

    With ``batch_norm`` each convolution is followed by BatchNorm (and has no bias).
    """

    def __init__(self, in_channels: int, spec: ExtraSpec, batch_norm: bool = False) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("reduce", nn.Conv2d(in_channels, spec.mid_channels, 1, bias=not batch_norm))
        ]
        if batch_norm:
            layers.append(("reduce_bn", nn.BatchNorm2d(spec.mid_channels)))
        layers.append(("reduce_relu", nn.ReLU(inplace=True)))
        conv = nn.Conv2d(
            spec.mid_channels,
            spec.out_channels,
            spec.kernel,
            stride=spec.stride,
            padding=spec.padding,
            bias=not batch_norm,
        )
        layers.append(("conv", conv))
        if batch_norm:
            layers.append(("conv_bn", nn.BatchNorm2d(spec.out_channels)))
        layers.append(("conv_relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))
        self.out_channels = spec.out_channels


def build_extras(in_channels: int, specs: tuple[ExtraSpec, ...], batch_norm: bool = False) -> nn.ModuleList:
    """Chain the blocks: the first reads ``in_channels``, each next one the previous output."""
    blocks = []
    for spec in specs:
        blocks.append(ExtraBlock(in_channels, spec, batch_norm=batch_norm))
        in_channels = spec.out_channels
    return nn.ModuleList(blocks)
