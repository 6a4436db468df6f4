"""Named model configurations ("presets") and `build_model`.

A preset fixes the backbone, the extra layers and the default-box layout. The VOC
and COCO variants differ only in their box sizes (the paper's Table / ssd.pytorch's
``voc`` and ``coco`` configs) and default class counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .models.compact import CompactBackbone
from .models.extras import SSD300_EXTRAS, SSD512_EXTRAS, ExtraSpec, build_extras
from .models.ssd import SSD
from .models.vgg import VGG16Backbone
from .priors import PRIOR_CLIP_MODES, PriorConfig
from .transforms import VGG_MEAN

__all__ = ["Preset", "PRESETS", "available_models", "build_model", "get_preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    prior_config: PriorConfig
    num_classes: int
    backbone: Callable[[], nn.Module]
    extras: tuple[ExtraSpec, ...]
    extras_batch_norm: bool = False
    image_mean: tuple[float, float, float] = VGG_MEAN


def _prior_config(image_size, feature_maps, steps, min_sizes, max_sizes, aspect_ratios) -> PriorConfig:
    return PriorConfig(
        image_size=image_size,
        feature_maps=tuple(feature_maps),
        steps=tuple(float(s) for s in steps),
        min_sizes=tuple(float(s) for s in min_sizes),
        max_sizes=tuple(float(s) for s in max_sizes),
        aspect_ratios=tuple(tuple(float(r) for r in ratios) for ratios in aspect_ratios),
    )


_SSD300_GRID = dict(feature_maps=(38, 19, 10, 5, 3, 1), steps=(8, 16, 32, 64, 100, 300))
_SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
_SSD512_GRID = dict(feature_maps=(64, 32, 16, 8, 4, 2, 1), steps=(8, 16, 32, 64, 128, 256, 512))
_SSD512_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))

SSD300_VOC_PRIORS = _prior_config(
    300, **_SSD300_GRID,
    min_sizes=(30, 60, 111, 162, 213, 264), max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=_SSD300_RATIOS,
)  # fmt: skip
SSD300_COCO_PRIORS = _prior_config(
    300, **_SSD300_GRID,
    min_sizes=(21, 45, 99, 153, 207, 261), max_sizes=(45, 99, 153, 207, 261, 315),
    aspect_ratios=_SSD300_RATIOS,
)  # fmt: skip
SSD512_VOC_PRIORS = _prior_config(
    512, **_SSD512_GRID,
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=_SSD512_RATIOS,
)  # fmt: skip
SSD512_COCO_PRIORS = _prior_config(
    512, **_SSD512_GRID,
    min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
    max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
    aspect_ratios=_SSD512_RATIOS,
)  # fmt: skip

# The compact preset: 160 px input, sources at strides 8, 16, 32, 53 and 160; 3:1 boxes
# down to the 20x20 level, for long thin objects (the demo data's bars are 2.5:1 to 4:1).
COMPACT_PRIORS = _prior_config(
    160,
    feature_maps=(20, 10, 5, 3, 1),
    steps=(8, 16, 32, 160 / 3, 160),
    min_sizes=(16, 36, 68, 100, 132),
    max_sizes=(36, 68, 100, 132, 164),
    aspect_ratios=((2, 3), (2, 3), (2, 3), (2, 3), (2,)),
)
COMPACT_EXTRAS = (ExtraSpec(96, 192, 3, 2, 1), ExtraSpec(64, 128, 3, 1, 0), ExtraSpec(64, 128, 3, 1, 0))

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("ssd300_voc", "SSD300, VGG16, VOC default boxes", SSD300_VOC_PRIORS, 21, VGG16Backbone,
               SSD300_EXTRAS),
        Preset("ssd300_coco", "SSD300, VGG16, COCO default boxes", SSD300_COCO_PRIORS, 81, VGG16Backbone,
               SSD300_EXTRAS),
        Preset("ssd512_voc", "SSD512, VGG16, VOC default boxes", SSD512_VOC_PRIORS, 21, VGG16Backbone,
               SSD512_EXTRAS),
        Preset("ssd512_coco", "SSD512, VGG16, COCO default boxes", SSD512_COCO_PRIORS, 81, VGG16Backbone,
               SSD512_EXTRAS),
        Preset("ssd160_compact", "SSD on a small BatchNorm backbone, 160 px input; trains on a CPU",
               COMPACT_PRIORS, 21, CompactBackbone, COMPACT_EXTRAS, extras_batch_norm=True),
    )
}  # fmt: skip


def available_models() -> list[str]:
    """Names accepted by `build_model`."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}") from None


def init_ssd_weights(model: SSD) -> None:
    """The paper's initialisation: Xavier-uniform extras and heads with zero biases.

    The backbone keeps its own initialisation (He-normal convolutions), ready to be
    overwritten by ImageNet weights (`singleshot.weights`).
    """
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for part in (model.extras, model.head):
        for module in part.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def build_model(
    name: str,
    num_classes: int | None = None,
    prior_clip: str | None = None,
    class_names: list[str] | None = None,
    prior_config: PriorConfig | None = None,
) -> SSD:
    """Build a preset SSD with the paper's initialisation.

    Args:
        name: one of `available_models()`.
        num_classes: including background; None = the preset's (21 for VOC, 81 for COCO).
            91 gives torchvision's sparse COCO layout.
        prior_clip: None = the preset's default ("center"); "center", "size" or "none"
            (see `singleshot.priors.PriorConfig`).
        class_names: optional names, index 0 = "__background__"; sets num_classes if that is None.
        prior_config: replaces the preset's default-box layout (e.g. one tuned with
            ``singleshot data coverage``); it must have one level per source of the network.
    """
    preset = get_preset(name)
    if prior_clip is not None and prior_clip not in PRIOR_CLIP_MODES:
        raise ValueError(f"prior_clip must be None or one of {PRIOR_CLIP_MODES}, got {prior_clip!r}")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else preset.num_classes
    backbone = preset.backbone()
    model = SSD(
        backbone=backbone,
        extras=build_extras(backbone.out_channels[-1], preset.extras, batch_norm=preset.extras_batch_norm),
        num_classes=num_classes,
        prior_config=(prior_config or preset.prior_config).with_clip(prior_clip),
        image_mean=preset.image_mean,
        preset=name,
        class_names=class_names,
    )
    init_ssd_weights(model)
    return model
