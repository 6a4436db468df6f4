"""SSDLite: SSD on MobileNetV3-Large with depthwise-separable extras and heads.

The layout of torchvision's ``ssdlite320_mobilenet_v3_large`` (MobileNetV2 paper, section
6.3; MobileNetV3 paper, section 6.1.2), so that its weights load with a renaming only:

- backbone: MobileNetV3-Large's ``features`` (built by torchvision's ``mobilenet_v3_large``),
  read at two points: the 1x1 expansion of the last stride-2 block ("C4", 672 channels at
  stride 16) and the end of the network (960 channels at stride 32, or 480 with the
  *reduced tail*: the last three blocks and the final 1x1 convolution at half width, the
  layout of torchvision's COCO weights trained from scratch);
- extras: four blocks of 1x1 reduce, 3x3 depthwise stride 2, 1x1 expand, each with
  BatchNorm and ReLU6 (10 -> 5 -> 3 -> 2 -> 1 at 320 px);
- heads: per source a 3x3 depthwise convolution with BatchNorm and ReLU6, then a 1x1
  convolution predicting the offsets or the class logits;
- BatchNorm everywhere with eps 0.001 and momentum 0.03; convolutions initialised from a
  normal distribution of std 0.03 with zero biases (torchvision's from-scratch scheme);
- default boxes: six scales evenly spaced from 0.2 to 0.95 of the image (then 1.0 for the
  last level's second square box), ratios 2 and 3 at every level, the sizes clamped to the
  image and the centres left where the grid puts them (``clip="size"``);
- input (RGB 0-255 - 127.5) / 127.5, i.e. [-1, 1];
- post-processing: score > 0.001, NMS at 0.55, 300 candidates per class, 300 detections,
  boxes clipped to the image before NMS.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from ..priors import PriorConfig
from .heads import PerLevelHead
from .init import reset_batch_norms
from .spec import Part, PostprocessConfig, SSDSpec

__all__ = [
    "MobileNetV3Backbone",
    "SSDLiteExtras",
    "SSDLiteExtraBlock",
    "SSDLiteHead",
    "SSDLITE_EXTRA_CHANNELS",
    "SSDLITE320_PRIORS",
    "SSDLITE_MEAN",
    "SSDLITE_STD",
    "SSDLITE_POSTPROCESS",
    "scale_prior_config",
    "ssdlite_spec",
]

BN_EPS = 0.001
BN_MOMENTUM = 0.03
INIT_STD = 0.03
# features[13] is MobileNetV3-Large's last stride-2 block (C4); it has no residual.
C4_INDEX = 13
SSDLITE_EXTRA_CHANNELS: tuple[int, ...] = (512, 256, 256, 128)
SSDLITE_MEAN: tuple[float, float, float] = (127.5, 127.5, 127.5)
SSDLITE_STD: tuple[float, float, float] = (127.5, 127.5, 127.5)
SSDLITE_POSTPROCESS = PostprocessConfig(
    score_threshold=0.001, nms_threshold=0.55, pre_nms_top_k=300, max_detections=300, clip=True
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _normal_convs(module: nn.Module, std: float = INIT_STD) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv_bn_relu6(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """(B, cin, H, W) -> (B, cout, H / stride, W / stride): bias-free conv, BatchNorm, ReLU6."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=_batch_norm(cout), relu=nn.ReLU6(inplace=True)))


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large's feature layers, returning the two SSDLite sources.

    forward: x (B, 3, S, S) in [-1, 1] -> [C4 expansion (B, 672, S/16, S/16), end of the
    network (B, 960 or 480, S/32, S/32)] (20 and 10 at S = 320; sizes rounded up).

    Args:
        reduced_tail: halve the width of the last three blocks and the final 1x1 convolution
            (torchvision's layout when no ImageNet weights are used, that of its COCO
            weights); False for the full network that ImageNet ``mobilenet_v3_large`` weights fit.

    A backbone part (see `singleshot.models.spec`): ``part_name`` "mobilenet_v3_large",
    setting ``reduced_tail``; ``imagenet_config`` is the setting ImageNet weights need.
    Parameter names are those of torchvision's ``MobileNetV3.features`` (``features.N.*``).
    """

    part_name = "mobilenet_v3_large"
    imagenet_config = {"reduced_tail": False}

    def __init__(self, reduced_tail: bool = True) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large

        norm = partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM)
        # num_classes=1: the classifier is dropped, so keep it small while it exists
        net = mobilenet_v3_large(
            weights=None, reduced_tail=bool(reduced_tail), norm_layer=norm, num_classes=1
        )
        self.features = net.features
        self.reduced_tail = bool(reduced_tail)
        c4 = self.features[C4_INDEX]
        if c4.use_res_connect:
            raise ValueError("MobileNetV3's C4 block must not be residual")
        self.out_channels = (c4.block[0].out_channels, self.features[-1].out_channels)

    def config(self) -> dict:
        """Constructor keyword arguments, as plain data."""
        return {"reduced_tail": self.reduced_tail}

    def reset_parameters(self) -> None:
        """Convolutions from N(0, 0.03) with zero biases, BatchNorm at 1 and 0 with fresh statistics
        (torchvision's SSDLite from scratch); ImageNet weights overwrite them (`singleshot.weights`)."""
        _normal_convs(self)
        reset_batch_norms(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        sources = []
        for index, layer in enumerate(self.features):
            if index == C4_INDEX:
                x = layer.block[0](x)  # the 1x1 expansion: the stride-16 source
                sources.append(x)
                x = layer.block[1:](x)  # depthwise stride 2, squeeze-excite, projection
            else:
                x = layer(x)
        sources.append(x)
        return sources


class SSDLiteExtraBlock(nn.Sequential):
    """(B, in, H, W) -> (B, out, ceil(H / 2), ceil(W / 2)): see `SSDLiteExtras`."""

    out_channels: int

    def __init__(self, in_channels: int, out_channels: int) -> None:
        mid = out_channels // 2
        super().__init__(
            OrderedDict(
                reduce=conv_bn_relu6(in_channels, mid),
                depthwise=conv_bn_relu6(mid, mid, 3, stride=2, groups=mid),
                expand=conv_bn_relu6(mid, out_channels),
            )
        )
        self.out_channels = out_channels


class SSDLiteExtras(nn.ModuleList):
    """Extra blocks, each (B, in, H, W) -> (B, out, ceil(H / 2), ceil(W / 2)): 1x1 ``reduce`` to
    out / 2, 3x3 ``depthwise`` stride 2, 1x1 ``expand`` to out; each conv + BatchNorm + ReLU6.

    An extras part (see `singleshot.models.spec`): ``part_name`` "ssdlite_extras", setting
    ``out_channels`` (one per block). Names: ``extras.<block>.<reduce|depthwise|expand>.<conv|bn>.*``.
    """

    part_name = "ssdlite_extras"

    def __init__(self, in_channels: int, out_channels: Sequence[int] = SSDLITE_EXTRA_CHANNELS) -> None:
        blocks = []
        for out in out_channels:
            blocks.append(SSDLiteExtraBlock(in_channels, int(out)))
            in_channels = out
        super().__init__(blocks)
        self.block_channels = tuple(int(c) for c in out_channels)

    def config(self) -> dict:
        """Constructor keyword arguments (beyond ``in_channels``), as plain data."""
        return {"out_channels": list(self.block_channels)}

    def reset_parameters(self) -> None:
        """N(0, 0.03) convolutions, BatchNorm reset (torchvision's scheme)."""
        _normal_convs(self)
        reset_batch_norms(self)


def _predictor(channels: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            depthwise=conv_bn_relu6(channels, channels, 3, groups=channels),
            predict=nn.Conv2d(channels, outputs, 1),
        )
    )


class SSDLiteHead(PerLevelHead):
    """Per-source depthwise-separable predictors of box offsets and class logits.

    forward: list of sources (B, C_k, H_k, W_k) -> ``loc`` (B, P, 4), ``conf`` (B, P, num_classes),
    flattened level -> row -> column -> box as `singleshot.models.MultiBoxHead` (and torchvision).

    A head part (see `singleshot.models.spec`): ``part_name`` "ssdlite", no settings.
    Names: ``head.<loc|conf>.<level>.depthwise.<conv|bn>.*`` and ``head.<loc|conf>.<level>.predict.*``.
    """

    part_name = "ssdlite"

    def __init__(
        self, in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int
    ) -> None:
        super().__init__(in_channels, boxes_per_location, num_classes, _predictor)

    def config(self) -> dict:
        """Constructor keyword arguments beyond (in_channels, boxes_per_location, num_classes): none."""
        return {}

    def reset_parameters(self) -> None:
        """N(0, 0.03) convolutions with zero biases, BatchNorm reset (torchvision's scheme)."""
        _normal_convs(self)
        reset_batch_norms(self)


def scale_prior_config(
    image_size: int,
    feature_maps: Sequence[int],
    min_ratio: float,
    max_ratio: float,
    aspect_ratios: Sequence[Sequence[float]],
    clip: str = "size",
) -> PriorConfig:
    """The paper's scales (section 2.2) as a `PriorConfig`: level k of m has the scale
    ``s_k = min_ratio + (max_ratio - min_ratio) k / (m - 1)`` of the image, its second square
    box ``sqrt(s_k s_{k+1})`` with ``s_m = 1``, and its grid spans the image (step = size / f_k).

    torchvision's ``DefaultBoxGenerator(aspect_ratios, min_ratio, max_ratio)`` without
    ``steps``; its ``clip=True`` clamps the sizes only, our ``clip="size"``.
    """
    levels = len(feature_maps)
    scales = [min_ratio + (max_ratio - min_ratio) * k / (levels - 1.0) for k in range(levels)] + [1.0]
    return PriorConfig(
        image_size=image_size,
        feature_maps=tuple(int(f) for f in feature_maps),
        steps=tuple(image_size / f for f in feature_maps),
        min_sizes=tuple(s * image_size for s in scales[:-1]),
        max_sizes=tuple(s * image_size for s in scales[1:]),
        aspect_ratios=tuple(tuple(float(r) for r in ratios) for ratios in aspect_ratios),
        clip=clip,
    )


# 320 px: MobileNetV3 gives 20 and 10, the extras 5, 3, 2, 1.
SSDLITE320_PRIORS = scale_prior_config(320, (20, 10, 5, 3, 2, 1), 0.2, 0.95, [(2, 3)] * 6)


def ssdlite_spec(num_classes: int, reduced_tail: bool = True) -> SSDSpec:
    """The SSDLite320 description (torchvision's ``ssdlite320_mobilenet_v3_large`` layout)."""
    return SSDSpec(
        backbone=Part(MobileNetV3Backbone, {"reduced_tail": reduced_tail}),
        extras=Part(SSDLiteExtras, {"out_channels": list(SSDLITE_EXTRA_CHANNELS)}),
        head=Part(SSDLiteHead),
        prior_config=SSDLITE320_PRIORS,
        num_classes=num_classes,
        image_mean=SSDLITE_MEAN,
        image_std=SSDLITE_STD,
        postprocess=SSDLITE_POSTPROCESS,
    )
