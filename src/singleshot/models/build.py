"""From an `SSDSpec` to an `SSD` (`build_ssd`) and back (`describe`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .spec import Part, SSDSpec, part_name
from .ssd import SSD, source_channels

__all__ = ["build_ssd", "describe"]


def _last_source_channels(backbone: nn.Module) -> int:
    channels: Sequence[int] = backbone.out_channels  # type: ignore[assignment]  # declared by each backbone
    return int(channels[-1])


def build_ssd(spec: SSDSpec, preset: str | None = None, reset: bool = True) -> SSD:
    """Build the parts in order (backbone, extras, head) and assemble the SSD.

    Args:
        spec: the model description.
        preset: the preset name to record on the model (``model.preset``), if any.
        reset: initialise each part with its ``reset_parameters`` (the paper's scheme for
            the built-in parts); with a seeded torch generator the weights are reproducible.
    """
    backbone = spec.backbone.build()
    extras = spec.extras.build(_last_source_channels(backbone))
    channels = source_channels(backbone, extras, spec.prior_config)
    head = spec.head.build(channels, spec.prior_config.boxes_per_location, spec.num_classes)
    model = SSD(
        backbone=backbone,
        extras=extras,
        head=head,
        num_classes=spec.num_classes,
        prior_config=spec.prior_config,
        image_mean=spec.image_mean,
        image_std=spec.image_std,
        postprocess=spec.postprocess,
        preset=preset,
        class_names=spec.class_names,
    )
    if reset:
        model.reset_parameters()
    return model


def _describe_part(module: nn.Module, role: str) -> Part:
    cls = type(module)
    try:
        part_name(cls)
    except ValueError as error:
        raise ValueError(f"the model's {role} cannot describe itself: {error}") from None
    config = getattr(module, "config", None)
    if not callable(config):
        raise ValueError(f"the model's {role} ({cls.__name__}) has no config() method")
    return Part(cls, config())


def describe(model: SSD) -> SSDSpec:
    """The `SSDSpec` that rebuilds ``model``'s architecture (its weights aside).

    Raises:
        ValueError: a part's class lacks its own ``part_name`` or a ``config()`` method.
    """
    return SSDSpec(
        backbone=_describe_part(model.backbone, "backbone"),
        extras=_describe_part(model.extras, "extras"),
        head=_describe_part(model.head, "head"),
        prior_config=model.prior_config,
        num_classes=model.num_classes,
        class_names=tuple(model.class_names) if model.class_names is not None else None,
        image_mean=model.image_mean,
        image_std=model.image_std,
        postprocess=model.postprocess,
    )
