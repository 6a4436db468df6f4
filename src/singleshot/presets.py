"""Named model configurations ("presets") and `build_model`.

A preset is a name for an `SSDSpec`: the parts (backbone, extra layers, heads, each a
class with its settings), the default-box layout, the input normalisation (mean, std)
and the post-processing defaults. The VOC and COCO variants differ only in their box
sizes (the paper's Table / ssd.pytorch's ``voc`` and ``coco`` configs) and default class
counts. A new backbone is one module with its part classes and one entry in `PRESETS`;
`part_classes` picks its parts up for the checkpoint loader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .models.build import build_ssd
from .models.compact import CompactBackbone
from .models.extras import SSD300_EXTRAS, SSD512_EXTRAS, ExtraSpec, SSDExtras
from .models.heads import MultiBoxHead
from .models.spec import Part, PostprocessConfig, SSDSpec, part_name
from .models.ssd import SSD
from .models.ssdlite import ssdlite_spec
from .models.vgg import VGG16Backbone
from .priors import PRIOR_CLIP_MODES, PriorConfig

__all__ = [
    "Preset",
    "PRESETS",
    "available_models",
    "build_model",
    "get_preset",
    "preset_spec",
    "part_classes",
]


@dataclass(frozen=True)
class Preset:
    """A named model: its description and the parts' default settings (``spec``)."""

    name: str
    description: str
    spec: SSDSpec

    @property
    def prior_config(self) -> PriorConfig:
        return self.spec.prior_config

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return self.spec.image_mean

    @property
    def image_std(self) -> tuple[float, float, float]:
        return self.spec.image_std

    @property
    def postprocess(self) -> PostprocessConfig:
        return self.spec.postprocess


def _extras(specs: tuple[ExtraSpec, ...], batch_norm: bool = False) -> Part:
    return Part(SSDExtras, {"specs": [asdict(spec) for spec in specs], "batch_norm": batch_norm})


def _ssd(backbone: Part, extras: Part, prior_config: PriorConfig, num_classes: int) -> SSDSpec:
    """The paper's detector layout (multibox heads, VGG mean, ssd.pytorch's post-processing)."""
    return SSDSpec(
        backbone=backbone,
        extras=extras,
        head=Part(MultiBoxHead),
        prior_config=prior_config,
        num_classes=num_classes,
    )


def _prior_config(
    image_size: int,
    feature_maps: Sequence[int],
    steps: Sequence[float],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
) -> PriorConfig:
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

_VGG16 = Part(VGG16Backbone)
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("ssd300_voc", "SSD300, VGG16, VOC default boxes",
               _ssd(_VGG16, _extras(SSD300_EXTRAS), SSD300_VOC_PRIORS, 21)),
        Preset("ssd300_coco", "SSD300, VGG16, COCO default boxes",
               _ssd(_VGG16, _extras(SSD300_EXTRAS), SSD300_COCO_PRIORS, 81)),
        Preset("ssd512_voc", "SSD512, VGG16, VOC default boxes",
               _ssd(_VGG16, _extras(SSD512_EXTRAS), SSD512_VOC_PRIORS, 21)),
        Preset("ssd512_coco", "SSD512, VGG16, COCO default boxes",
               _ssd(_VGG16, _extras(SSD512_EXTRAS), SSD512_COCO_PRIORS, 81)),
        Preset("ssd160_compact", "SSD on a small BatchNorm backbone, 160 px input; trains on a CPU",
               _ssd(Part(CompactBackbone), _extras(COMPACT_EXTRAS, batch_norm=True), COMPACT_PRIORS, 21)),
        Preset("ssdlite320_coco", "SSDLite320, MobileNetV3-Large, torchvision's layout; COCO",
               ssdlite_spec(81)),
        Preset("ssdlite320_voc", "SSDLite320, MobileNetV3-Large, torchvision's layout; VOC",
               ssdlite_spec(21)),
    )
}  # fmt: skip

# Parts every checkpoint may name, besides those the presets use.
BUILTIN_PARTS: tuple[type, ...] = (VGG16Backbone, CompactBackbone, SSDExtras, MultiBoxHead)


def part_classes(extra: Mapping[str, type] | None = None) -> dict[str, type]:
    """Part name -> class: the built-in parts, those the presets use, then ``extra`` (a
    user's own parts, by the name a checkpoint records; they win over the others)."""
    table: dict[str, type] = {}
    for preset in PRESETS.values():
        for part in (preset.spec.backbone, preset.spec.extras, preset.spec.head):
            table[part.name] = part.cls
    for cls in BUILTIN_PARTS:
        table[part_name(cls)] = cls
    for name, cls in (extra or {}).items():
        if not (isinstance(name, str) and isinstance(cls, type)):
            raise ValueError(f"parts must map names to classes, got {name!r}: {cls!r}")
        table[name] = cls
    return table


def available_models() -> list[str]:
    """Names accepted by `build_model`."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}") from None


def init_ssd_weights(model: SSD) -> None:
    """The paper's initialisation, by each part's own ``reset_parameters``: He-normal VGG
    backbone convolutions, Xavier-uniform extras and heads, zero biases."""
    model.reset_parameters()


def preset_spec(
    name: str,
    num_classes: int | None = None,
    prior_clip: str | None = None,
    class_names: list[str] | None = None,
    prior_config: PriorConfig | None = None,
) -> SSDSpec:
    """A preset's `SSDSpec` with `build_model`'s arguments applied (see there)."""
    preset = get_preset(name)
    if prior_clip is not None and prior_clip not in PRIOR_CLIP_MODES:
        raise ValueError(f"prior_clip must be None or one of {PRIOR_CLIP_MODES}, got {prior_clip!r}")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else preset.num_classes
    return preset.spec.replace(
        num_classes=num_classes,
        class_names=tuple(class_names) if class_names is not None else None,
        prior_config=(prior_config or preset.prior_config).with_clip(prior_clip),
    )


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
    spec = preset_spec(name, num_classes, prior_clip, class_names, prior_config)
    return build_ssd(spec, preset=name)
