"""Your own published weights, listed in a JSON file (``$SINGLESHOT_WEIGHTS_REGISTRY``).

The file is a list of entries, each an object with the fields of `PublishedWeights`::

    [{"name": "acme_parts_ssd300", "kind": "detector", "source": "singleshot",
      "url": "https://models.acme.internal/parts-ssd300-v3.pt",
      "sha256": "<the file's 64 hex digits>",
      "preset": "ssd300_voc", "licence": "proprietary",
      "metric": {"value": 81.2, "name": "mAP (11-point)", "dataset": "parts-2026 test",
                 "source": "model card", "url": "https://models.acme.internal/parts"}}]

Required: ``name``, ``kind``, ``source``, ``url`` and the full ``sha256`` (a file you
publish yourself has a hash to state). The others are optional: ``classes`` defaults to
the source's usual list (torchvision: ``coco91``, ssd.pytorch: ``voc21``, singleshot: the
checkpoint's own; a backbone: ``imagenet1k``), ``params``/``mult_adds``/``metric`` to
not stated. Unknown fields are refused, so that a misspelt one is not silently ignored.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .registry import CLASS_LISTS, KINDS, SHA256, SOURCES, Metric, PublishedWeights

__all__ = ["read_registry_file", "entry_from_dict"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REQUIRED = ("name", "kind", "source", "url", "sha256")
_OPTIONAL_TEXT = ("licence", "licence_note", "checksum", "counted_at")
_DEFAULT_CLASSES = {"torchvision": "coco91", "ssd.pytorch": "voc21", "singleshot": "own"}


def read_registry_file(path: str | os.PathLike) -> dict[str, PublishedWeights]:
    """{name: entry} of a registry file, in the file's order.

    Raises:
        ValueError: unreadable file, not a JSON list of entries, a bad entry or a name given
            twice; the message names the file (and the entry).
    """
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the published-weights registry: {error}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of published-weights entries")
    entries: dict[str, PublishedWeights] = {}
    for index, item in enumerate(items):
        try:
            entry = entry_from_dict(item)
        except ValueError as error:
            raise ValueError(f"{path}: entry {index}: {error}") from None
        if entry.name in entries:
            raise ValueError(f"{path}: the name {entry.name!r} is given twice")
        entries[entry.name] = entry
    return entries


def entry_from_dict(item: Any) -> PublishedWeights:
    """One checked entry from its JSON object (ValueError saying what is wrong)."""
    if not isinstance(item, dict):
        raise ValueError("an entry must be a JSON object")
    unknown = sorted(set(item) - {f.name for f in fields(PublishedWeights)})
    missing = [key for key in _REQUIRED if key not in item]
    if unknown or missing:
        said = [f"unknown fields: {', '.join(unknown)}"] * bool(unknown)
        said += [f"missing fields: {', '.join(missing)}"] * bool(missing)
        raise ValueError("; ".join(said))
    text = {key: _string(item, key) for key in (*_REQUIRED, *_OPTIONAL_TEXT)}
    _check_identity(text)
    kind = text["kind"]
    default = "imagenet1k" if kind == "backbone" else _DEFAULT_CLASSES[text["source"]]
    classes = item.get("classes") or default
    if classes not in CLASS_LISTS:
        raise ValueError(f"classes {classes!r} is not one of {', '.join(CLASS_LISTS)}")
    preset = item.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"preset must be a preset name, got {preset!r}")
    return PublishedWeights(
        name=text["name"],
        kind=kind,
        preset=preset,
        source=text["source"],
        url=text["url"],
        sha256=text["sha256"].lower(),
        checksum=text["checksum"] or "stated by the registry file",
        licence=text["licence"] or "not stated",
        licence_note=text["licence_note"],
        classes=classes,
        metric=_metric(item.get("metric")),
        params=_number(item, "params", int),
        mult_adds=_number(item, "mult_adds", float),
        counted_at=text["counted_at"],
    )


def _string(item: dict[str, Any], key: str) -> str:
    value = item.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _check_identity(text: dict[str, str]) -> None:
    if not _NAME.fullmatch(text["name"]):
        raise ValueError(f"name {text['name']!r}: use letters, digits, '_', '.' and '-'")
    if text["kind"] not in KINDS:
        raise ValueError(f"kind {text['kind']!r} is not one of {', '.join(KINDS)}")
    if text["source"] not in SOURCES:
        raise ValueError(f"source {text['source']!r} is not one of {', '.join(SOURCES)}")
    parts = urlsplit(text["url"])
    if parts.scheme not in ("http", "https", "file") or not parts.path.rstrip("/").rpartition("/")[2]:
        raise ValueError(f"url {text['url']!r}: expected an http, https or file URL ending in a file name")
    if not SHA256.fullmatch(text["sha256"].lower()):
        raise ValueError(f"sha256 must be the file's 64 hex digits, got {text['sha256']!r}")


def _number(item: dict[str, Any], key: str, kind: type) -> Any:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    return kind(value)


def _metric(value: Any) -> Metric | None:
    if value is None:
        return None
    keys = {"value", "name", "dataset", "source", "url"}
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"metric must be an object with exactly {', '.join(sorted(keys))}")
    if isinstance(value["value"], bool) or not isinstance(value["value"], (int, float)):
        raise ValueError(f"metric value must be a number, got {value['value']!r}")
    texts = [value[key] for key in ("name", "dataset", "source", "url")]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("metric name, dataset, source and url must be strings")
    return Metric(float(value["value"]), *texts)
