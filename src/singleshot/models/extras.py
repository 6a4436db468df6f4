"""The extra feature layers that SSD adds after the base network (paper Fig. 2).

Each block is a 1x1 convolution that reduces the channels, then a 3x3 (or 4x4)
convolution that shrinks the grid; its output is one more source for the heads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .init import reset_batch_norms, xavier_uniform_convs

__all__ = ["ExtraSpec", "ExtraBlock", "SSDExtras", "build_extras", "SSD300_EXTRAS", "SSD512_EXTRAS"]


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


class SSDExtras(nn.ModuleList):
    """The chain of extra blocks: the first reads ``in_channels``, each next one the previous output.

    An extras part (see `singleshot.models.spec`): ``part_name`` "ssd_extras", settings
    ``specs`` (`ExtraSpec` or its fields as a mapping, one per block) and ``batch_norm``.
    Parameter names are ``<block index>.<layer>.weight`` (``extras.0.reduce.weight`` in an SSD).
    """

    part_name = "ssd_extras"

    def __init__(
        self, in_channels: int, specs: Sequence[ExtraSpec | Mapping], batch_norm: bool = False
    ) -> None:
        checked = tuple(s if isinstance(s, ExtraSpec) else ExtraSpec(**s) for s in specs)
        blocks = []
        for spec in checked:
            blocks.append(ExtraBlock(in_channels, spec, batch_norm=batch_norm))
            in_channels = spec.out_channels
        super().__init__(blocks)
        self.specs = checked
        self.batch_norm = bool(batch_norm)

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (beyond ``in_channels``), as plain data."""
        return {"specs": [asdict(spec) for spec in self.specs], "batch_norm": self.batch_norm}

    def reset_parameters(self) -> None:
        """The paper's initialisation: Xavier-uniform weights, zero biases (BatchNorm reset)."""
        xavier_uniform_convs(self)
        reset_batch_norms(self)


def build_extras(in_channels: int, specs: tuple[ExtraSpec, ...], batch_norm: bool = False) -> SSDExtras:
    """Chain the blocks: the first reads ``in_channels``, each next one the previous output."""
    return SSDExtras(in_channels, specs, batch_norm=batch_norm)
