"""YAML recipes and ``key=value`` overrides, read into a `TrainConfig`.

A recipe is a YAML file whose keys mirror `TrainConfig` (nested sections for the
optimizer and the schedule)::

    model: ssd300_voc
    batch_size: 32            # total over all processes (the learning rate is given for it)
    iterations: 120000
    optimizer: {name: sgd, lr: 0.001, momentum: 0.9, weight_decay: 0.0005}
    schedule: {name: multistep, milestones: [80000, 100000], gamma: 0.1}

Shipped recipes live in ``singleshot/recipes`` and are found by name (``ssd300_voc0712``)
as well as by path. Overrides use dotted keys and YAML values: ``optimizer.lr=0.01``,
``schedule.milestones=[1000,2000]``, ``amp=bf16``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig

__all__ = [
    "available_recipes",
    "recipe_path",
    "load_recipe",
    "parse_override",
    "apply_overrides",
    "apply_values",
]


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``singleshot/recipes``."""
    folder = resources.files("singleshot") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = Path(str(resources.files("singleshot") / "recipes" / f"{path.name.removesuffix('.yaml')}.yaml"))
    if shipped.is_file():
        return shipped
    shipped_names = ", ".join(available_recipes())
    raise ValueError(f"{name_or_path}: no such recipe file or shipped recipe ({shipped_names})")


def load_recipe(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (a path or a shipped name) into a `TrainConfig`, then apply overrides."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    config = TrainConfig.from_dict(data, source=str(path))
    return apply_overrides(config, overrides or [])


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"optimizer.lr=0.01"`` -> (("optimizer", "lr"), 0.01); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: value is not valid YAML: {error}") from None
    return tuple(key.strip().split(".")), value


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A copy of ``config`` with each ``KEY=VALUE`` override applied (dotted keys for sections)."""
    return apply_values(config, dict(parse_override(text) for text in overrides))


def apply_values(
    config: TrainConfig,
    values: Mapping[str, Any] | Mapping[tuple[str, ...], Any] | Mapping[str | tuple[str, ...], Any],
) -> TrainConfig:
    """A copy of ``config`` with values set by dotted key (``{"optimizer.lr": 0.01}``) or key tuple.

    Values are used as given (no YAML parsing) and checked against the field types.
    """
    data = config.to_dict()
    for key, value in values.items():
        keys = key.split(".") if isinstance(key, str) else list(key)
        dotted = ".".join(keys)
        node = data
        for part in keys[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {dotted!r}: {part!r} is not a section")
            node = node[part]
        if keys[-1] not in node and not (len(keys) > 1 and keys[0] == "augment"):
            raise ValueError(f"override {dotted!r}: unknown key")
        node[keys[-1]] = value
    return TrainConfig.from_dict(data, source="overrides")
