"""Published weights by name -> a singleshot checkpoint or a backbone file, ready to use.

>>> published_checkpoint("ssd300_vgg16_coco")     # fetched and converted once, then cached
PosixPath('/home/me/.cache/singleshot/weights/ssd300_vgg16_coco-b556d3b4.singleshot.pt')
>>> backbone_file("vgg16_reducedfc@sha256:<64 hex digits>")   # a file path is returned as it is

`singleshot.load`, ``singleshot detect --model`` and ``singleshot eval --checkpoint`` take a
detector's name (`published_checkpoint`); ``singleshot train --backbone-weights`` a
backbone's (`backbone_file`). A detector's file is converted by `convert_file` (for its
source's layout) into a singleshot checkpoint saved beside it, so later loads neither
convert nor re-hash; a source "singleshot" file is a checkpoint already.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from .download import cache_lock, cached_file, converted_file, expected_sha256, fetch
from .registry import PublishedWeights, parse_name, published_names, registry

__all__ = ["backbone_file", "cache_state", "is_published_name", "published_checkpoint"]


def is_published_name(text: str) -> bool:
    """Whether ``text`` is a registry name, alone or with a confirmed hash (``NAME@sha256:...``)."""
    return text.partition("@")[0] in registry()


def published_checkpoint(name: str, progress: bool | None = None) -> Path:
    """The singleshot checkpoint of the published detector ``name`` (see `parse_name`).

    Fetched (`fetch`: verified, cached, one process at a time) and converted on first use;
    the converted checkpoint is cached beside the download and returned from then on.

    Raises:
        ValueError: an unknown name (the message lists the known ones), backbone weights, or
            a file that does not convert (the message names it).
        DownloadError: see `fetch`.
    """
    entry, confirmed = parse_name(name)
    if entry.kind != "detector":
        raise ValueError(
            f"{entry.name} is {entry.kind} weights, not a detector: train on them with --backbone-weights "
            f"{entry.name}; detectors: {', '.join(published_names('detector'))}"
        )
    if entry.source == "singleshot":
        return fetch(entry, confirmed, progress)
    converted = converted_file(entry)
    if confirmed is None and converted.is_file():
        return converted
    expected_sha256(entry, confirmed)  # a refusal comes before anything is written
    with cache_lock(converted, entry.name, progress):
        download = fetch(entry, confirmed, progress)  # a changed file removes the old conversion
        if not converted.is_file():
            _convert(entry, download, converted)
    return converted


def _convert(entry: PublishedWeights, download: Path, converted: Path) -> None:
    from ..checkpoint import save_checkpoint
    from ..models.ssd import SSD
    from .build import convert_file

    model = convert_file(download, entry.source, preset=entry.preset, class_names=entry.class_names())
    save_checkpoint(converted, cast(SSD, model))  # convert_file builds an SSD


def backbone_file(source: str | os.PathLike, progress: bool | None = None) -> Path:
    """The file of backbone weights ``source`` names: a path as it is, a published backbone's
    name (`parse_name`) fetched and verified (`fetch`).

    Raises:
        ValueError: neither an existing file nor a backbone's name (the message lists them).
        DownloadError: see `fetch`.
    """
    path = Path(source)
    if path.is_file() or not isinstance(source, str) or not is_published_name(source):
        if not path.is_file():
            known = ", ".join(published_names("backbone"))
            raise ValueError(f"{source}: no such file, nor the name of published backbone weights ({known})")
        return path
    entry, confirmed = parse_name(source)
    if entry.kind != "backbone":
        raise ValueError(
            f"{entry.name} is a whole detector, not backbone weights: fine-tune it with --init-from "
            f"{entry.name}; backbones: {', '.join(published_names('backbone'))}"
        )
    return fetch(entry, confirmed, progress)


def cache_state(entry: PublishedWeights) -> str:
    """Whether ``entry`` is cached: "converted" (a checkpoint is ready), "downloaded" or "no"."""
    if entry.kind == "detector" and entry.source != "singleshot" and converted_file(entry).is_file():
        return "converted"
    return "downloaded" if cached_file(entry).is_file() else "no"
