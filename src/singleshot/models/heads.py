"""The multibox heads: one 3x3 convolution per source for box offsets, one for class scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .init import xavier_uniform_convs

__all__ = ["MultiBoxHead", "PerLevelHead"]


class PerLevelHead(nn.Module):
    """What every SSD head shares: one box predictor and one class predictor per source.

    ``predictor(in_channels, out_channels)`` makes one level's predictor, mapping
    (B, C_k, H_k, W_k) to (B, A_k * 4, H_k, W_k) in ``self.loc`` and to
    (B, A_k * num_classes, H_k, W_k) in ``self.conf``.

    forward: list of sources (B, C_k, H_k, W_k) -> ``loc`` (B, P, 4), ``conf`` (B, P, num_classes)
    with P = sum(H_k * W_k * A_k), flattened level -> row -> column -> box (the order of
    Caffe SSD, ssd.pytorch and torchvision, so that their weights carry over).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_location: Sequence[int],
        num_classes: int,
        predictor: Callable[[int, int], nn.Module],
    ) -> None:
        super().__init__()
        if len(in_channels) != len(boxes_per_location):
            raise ValueError(f"{len(in_channels)} sources but {len(boxes_per_location)} prior levels")
        self.num_classes = num_classes
        pairs = list(zip(in_channels, boxes_per_location))
        # all box predictors, then all class predictors: the order their weights are drawn in
        self.loc = nn.ModuleList(predictor(c, a * 4) for c, a in pairs)
        self.conf = nn.ModuleList(predictor(c, a * num_classes) for c, a in pairs)

    @staticmethod
    def _flatten(x: Tensor, width: int) -> Tensor:
        # (B, A * width, H, W) -> (B, H * W * A, width); free when x is channels_last.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)

    def forward(self, sources: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(sources) != len(self.loc):
            raise ValueError(f"expected {len(self.loc)} sources, got {len(sources)}")
        loc = torch.cat([self._flatten(head(x), 4) for head, x in zip(self.loc, sources)], dim=1)
        conf = torch.cat(
            [self._flatten(head(x), self.num_classes) for head, x in zip(self.conf, sources)], dim=1
        )
        return loc, conf


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class MultiBoxHead(PerLevelHead):
    """Per-source 3x3 (padding 1) predictors of box offsets and class logits (see `PerLevelHead`).

    A head part (see `singleshot.models.spec`): ``part_name`` "multibox", no settings.
    """

    part_name = "multibox"

    def __init__(
        self, in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int
    ) -> None:
        super().__init__(in_channels, boxes_per_location, num_classes, _conv3x3)

    def config(self) -> dict:
        """Constructor keyword arguments beyond (in_channels, boxes_per_location, num_classes): none."""
        return {}

    def reset_parameters(self) -> None:
        """The paper's initialisation: Xavier-uniform weights, zero biases."""
        xavier_uniform_convs(self)
