"""``singleshot models``: the published weights singleshot uses by name, as a table or one in full."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..weights.registry import PublishedWeights

COLUMNS = (
    "name",
    "kind",
    "preset",
    "source",
    "published metric (source)",
    "params",
    "mult-adds",
    "licence",
    "cached",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the published weights usable by name",
        description=(
            "List the published weights that `detect --model NAME`, `eval --checkpoint NAME`, "
            "singleshot.load(NAME) (detectors) and `train --backbone-weights NAME` (backbones) "
            "download on first use into the cache ($SINGLESHOT_CACHE/weights, else "
            "~/.cache/singleshot/weights), verify by SHA-256 and convert once. Columns: the "
            "published metric and who published it, parameters, multiply-adds for one image "
            "(G = billions), licence, and whether the file is cached (converted: a singleshot "
            "checkpoint is ready). With NAME: that entry in full (URL, hash, classes, sources). "
            "$SINGLESHOT_WEIGHTS_MIRROR replaces the origin; $SINGLESHOT_WEIGHTS_REGISTRY adds "
            "entries from a JSON file."
        ),
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="show this entry in full")
    parser.set_defaults(func=run)


def _count(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f}M" if unit == "params" else f"{value:.3g}G"


def table_rows(entries: Sequence[PublishedWeights]) -> list[tuple[str, ...]]:
    """One row of `COLUMNS` per entry."""
    from ..weights.published import cache_state

    rows: list[tuple[str, ...]] = []
    for entry in entries:
        metric = f"{entry.metric} ({entry.metric.project})" if entry.metric else "none published"
        rows.append((entry.name, entry.kind, entry.preset or "-", entry.source, metric,
                     _count(entry.params, "params"), _count(entry.mult_adds, "mult-adds"),
                     entry.licence, cache_state(entry)))  # fmt: skip
    return rows


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] = COLUMNS) -> str:
    """Left-aligned columns two spaces apart, under a header."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)
    ]
    return "\n".join(lines)


def describe(entry: PublishedWeights) -> str:
    """Everything the registry says about ``entry``, one field a line."""
    from ..weights.download import cached_file, converted_file, download_url
    from ..weights.published import cache_state
    from ..weights.registry import CLASS_LISTS

    if entry.sha256 is None:
        digest = "none published"
    else:
        digest = f"{entry.sha256}{'...' if entry.hash_is_prefix else ''}"
    metric = "none published"
    if entry.metric:
        metric = f"{entry.metric} ({entry.metric.source}, {entry.metric.url})"
    fields = [
        ("name", entry.name),
        ("kind", entry.kind),
        ("preset", entry.preset or "-"),
        ("source", entry.source),
        ("url", entry.url),
        ("fetched from", download_url(entry)),
        ("sha256", f"{digest} ({entry.checksum})"),
        ("classes", CLASS_LISTS[entry.classes][0]),
        ("metric", metric),
        ("params", _count(entry.params, "params")),
        ("mult-adds", f"{_count(entry.mult_adds, 'mult-adds')} ({entry.counted_at or 'not stated'})"),
        ("licence", f"{entry.licence} ({entry.licence_note})" if entry.licence_note else entry.licence),
        ("file", str(cached_file(entry))),
    ]
    if entry.kind == "detector" and entry.source != "singleshot":
        fields.append(("converted", str(converted_file(entry))))
    fields.append(("cached", cache_state(entry)))
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in fields)


def run(args: argparse.Namespace) -> int:
    from ..weights.download import MIRROR_VARIABLE, weights_dir
    from ..weights.registry import published, registry

    if args.name is not None:
        print(describe(published(args.name)))
        return 0
    print(format_table(table_rows(list(registry().values()))))
    mirror = os.environ.get(MIRROR_VARIABLE) or "none (the origins)"
    print(f"\ncache: {weights_dir()}   mirror: {mirror}")
    print("names without a published checksum take NAME@sha256:<64 hex digits> (`singleshot models NAME`)")
    return 0
