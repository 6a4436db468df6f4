"""An SSD described as data: which parts, with which settings, and the model-wide choices.

A *part* is a module class with its own ``part_name`` (a class attribute), a ``config()``
method returning its constructor's keyword arguments as plain data (numbers, strings,
booleans, None, lists and string-keyed dicts of those) and, optionally, a
``reset_parameters()`` that gives it its initial weights. The three roles are built as

- backbone: ``cls(**config)``; has ``out_channels`` (one per source it returns) and maps
  x (B, 3, S, S) to a list of sources (B, C_k, H_k, W_k);
- extras: ``cls(in_channels, **config)`` with the backbone's last source channels; an
  iterable of blocks, each with ``out_channels``, applied one after the other;
- head: ``cls(in_channels, boxes_per_location, num_classes, **config)``; maps the list of
  sources to ``loc`` (B, P, 4) and ``conf`` (B, P, num_classes).

`SSDSpec` holds the part classes themselves (no registry); `SSDSpec.to_dict` writes their
names and `SSDSpec.from_dict` resolves names through a table the caller passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from torch import nn

from ..priors import PriorConfig
from ..transforms import VGG_MEAN

__all__ = ["Part", "PostprocessConfig", "SSDSpec", "part_name", "UNIT_STD", "MODEL_DEFAULT"]

UNIT_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)
ROLES = ("backbone", "extras", "head")


def part_name(cls: type) -> str:
    """The ``part_name`` a class defines itself (a subclass must not pass for its parent)."""
    name = cls.__dict__.get("part_name") if isinstance(cls, type) else None
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{getattr(cls, '__name__', cls)!r} is not a model part: its class must define its own "
            "`part_name` (and a `config()` method returning its constructor's keyword arguments)"
        )
    return name


def _check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is plain data (what JSON holds)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} holds a non-finite number {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)
        return
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for item in value.values():
            _check_plain(item, where)
        return
    raise ValueError(
        f"{where} must be plain data (numbers, strings, lists, dicts), got {type(value).__name__}"
    )


class _ModelDefault:
    """An argument left out of `SSD.predict`: the model's ``postprocess`` setting applies."""

    def __repr__(self) -> str:
        return "<model.postprocess>"


MODEL_DEFAULT: Any = _ModelDefault()


@dataclass(frozen=True)
class PostprocessConfig:
    """Default post-processing of a model (`singleshot.postprocess.detect`'s settings).

    The SSD presets use ssd.pytorch's values with a cap of 200 detections per image.
    """

    score_threshold: float = 0.01
    nms_threshold: float = 0.45
    pre_nms_top_k: int = 200
    max_detections: int | None = 200
    clip: bool = False

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"postprocess {name} must be a number, got {value!r}")
        for name in ("pre_nms_top_k", "max_detections"):
            value = getattr(self, name)
            if value is None and name == "max_detections":
                continue
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"postprocess {name} must be a positive integer, got {value!r}")
        if not isinstance(self.clip, bool):
            raise ValueError(f"postprocess clip must be true or false, got {self.clip!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "max_detections": self.max_detections,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PostprocessConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"postprocess must be a mapping, got {data!r}")
        unknown = set(data) - set(cls().to_dict())
        if unknown:
            raise ValueError(f"postprocess has unknown settings: {', '.join(sorted(map(str, unknown)))}")
        return cls(**data)


@dataclass(frozen=True)
class Part:
    """A part class and its constructor's keyword arguments (plain data)."""

    cls: type[nn.Module]
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return part_name(self.cls)

    def build(self, *args: Any) -> nn.Module:
        """``cls(*args, **config)``: the role's positional arguments (see the module docstring)."""
        return self.cls(*args, **dict(self.config))

    def to_dict(self) -> dict[str, Any]:
        _check_plain(self.config, f"the {self.name} part's config")
        return {"name": self.name, "config": _plain_copy(self.config)}

    @classmethod
    def from_dict(cls, data: Any, parts: Mapping[str, type], role: str) -> Part:
        if not (isinstance(data, Mapping) and isinstance(data.get("name"), str)):
            raise ValueError(f"the {role} part must be a mapping with a name, got {data!r}")
        name, config = data["name"], data.get("config", {})
        if name not in parts:
            raise ValueError(
                f"unknown {role} part {name!r} (known: {', '.join(sorted(parts))}; "
                f"pass your own class as parts={{{name!r}: YourClass}})"
            )
        if not isinstance(config, Mapping):
            raise ValueError(f"the {role} part {name!r} has a config that is not a mapping: {config!r}")
        _check_plain(config, f"the {role} part {name!r}'s config")
        return cls(parts[name], _plain_copy(config))


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(value: Any, name: str, positive: bool = False) -> tuple[float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value)):
        raise ValueError(f"{name} must be three numbers, got {value!r}")
    if positive and not all(v > 0 for v in value):
        raise ValueError(f"{name} must be three positive numbers, got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


@dataclass(frozen=True)
class SSDSpec:
    """Everything that defines an SSD's architecture and input/output conventions.

    Attributes:
        backbone, extras, head: the parts (see the module docstring).
        prior_config: default-box layout, one level per source.
        num_classes: including background (index 0).
        class_names: optional names, index 0 = "__background__".
        image_mean, image_std: RGB, 0-255 scale; the input is (RGB - image_mean) / image_std.
        postprocess: default post-processing settings of `SSD.predict`.
    """

    backbone: Part
    extras: Part
    head: Part
    prior_config: PriorConfig
    num_classes: int
    class_names: tuple[str, ...] | None = None
    image_mean: tuple[float, float, float] = VGG_MEAN
    image_std: tuple[float, float, float] = UNIT_STD
    postprocess: PostprocessConfig = PostprocessConfig()

    def replace(self, **changes: Any) -> SSDSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-compatible); `from_dict` reads it back."""
        return {
            "parts": {role: getattr(self, role).to_dict() for role in ROLES},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "prior_config": self.prior_config.to_dict(),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "postprocess": self.postprocess.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], parts: Mapping[str, type]) -> SSDSpec:
        """Read `to_dict`'s layout, checked; part names resolve through ``parts`` (name -> class).

        ``image_std`` and ``postprocess`` may be absent (1.0 and today's defaults).

        Raises:
            ValueError: a field of the wrong type or value, or a part name not in ``parts``.
        """
        found = data.get("parts")
        if not isinstance(found, Mapping):
            raise ValueError(f"parts must be a mapping of {', '.join(ROLES)}, got {found!r}")
        roles: dict[str, Any] = {role: Part.from_dict(found.get(role), parts, role) for role in ROLES}
        return cls(**roles, **read_fields(data))


def read_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """`SSDSpec`'s fields other than the parts from a description, checked (ValueError)."""
    num_classes, names = data.get("num_classes"), data.get("class_names")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"class_names must be a list of names, got {names!r}")
    prior = data.get("prior_config")
    if not isinstance(prior, Mapping):
        raise ValueError(f"prior_config must be a mapping, got {prior!r}")
    std = data.get("image_std")
    post = data.get("postprocess")
    return {
        "num_classes": num_classes,
        "class_names": tuple(names) if names is not None else None,
        "prior_config": PriorConfig.from_dict(dict(prior)),
        "image_mean": _triple(data.get("image_mean"), "image_mean"),
        "image_std": UNIT_STD if std is None else _triple(std, "image_std", positive=True),
        "postprocess": PostprocessConfig() if post is None else PostprocessConfig.from_dict(post),
    }
