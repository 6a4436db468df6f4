"""Where singleshot keeps what it makes or fetches once per machine.

The root is ``$SINGLESHOT_CACHE`` if set, else ``$XDG_CACHE_HOME/singleshot``, else
``~/.cache/singleshot``. It holds the built Winograd kernels (`singleshot.winograd.cache`)
and, under ``weights/``, downloaded published weights and the singleshot checkpoints
converted from them (`singleshot.weights.download`), and the memory-format decisions
(`singleshot.layout`). Nothing is created here: each user of the folder creates what it
writes. What is built or measured for one CPU is keyed by `cpu_identity`, so a shared home
folder serves several machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text

__all__ = [
    "cache_dir",
    "cached_files",
    "cpu_identity",
    "cpu_name",
    "keyed_path",
    "read_keyed",
    "remove_cached",
    "write_keyed",
]


def cache_dir() -> Path:
    """The cache root, read from the environment on every call (it may not exist yet)."""
    configured = os.environ.get("SINGLESHOT_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "singleshot"


def cached_files(pattern: str) -> list[Path]:
    """The files in the cache root matching the glob ``pattern``, sorted by name."""
    folder = cache_dir()
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def remove_cached(pattern: str) -> list[Path]:
    """Delete the files in the cache root matching ``pattern`` (nothing else); returns them."""
    removed = cached_files(pattern)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def cpu_identity() -> str:
    """The CPU's model and instruction-set flags, as /proc/cpuinfo gives them for the first CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # the first CPU's lines; the others repeat them


def cpu_name() -> str:
    """The CPU's model name (for messages), or the machine type where /proc/cpuinfo has none."""
    for line in cpu_identity().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine() or "unknown CPU"


def keyed_path(prefix: str, key: dict[str, Any]) -> Path:
    """``<cache>/<prefix>-<16 hex digits of the key's hash>.json``: where a measured choice that
    depends on ``key`` (plain JSON data) is kept; the file may not exist."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}-{digest}.json"


def read_keyed(path: Path, key: dict[str, Any], field: str, what: str) -> dict[str, Any] | None:
    """The record (a JSON object under ``field``; ``what`` names it in warnings) written by
    `write_keyed` to ``path`` for ``key``, or None: no file; a file that cannot be read, is
    corrupt or holds another key is ignored with a warning naming it and the reason (the next
    `write_keyed` replaces it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        warnings.warn(f"{path}: cannot read the cached {what} ({error}); measuring again", stacklevel=3)
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("key") != key:
            raise ValueError("its key is not this trial's")
        record = data.get(field)
        if not isinstance(record, dict):
            raise ValueError(f"it holds no {what}")
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        warnings.warn(f"{path}: ignoring a corrupt cached {what} ({error}); measuring again", stacklevel=3)
        return None
    return record


def write_keyed(
    path: Path, key: dict[str, Any], field: str, what: str, record: dict[str, Any]
) -> Path | None:
    """Write ``record`` (JSON data) under ``field`` with ``key`` to ``path`` atomically, so a
    reader never sees half of it; the path, or None with a warning naming ``what`` when the
    cache folder is not writable."""
    try:
        atomic_write_text(path, json.dumps({"key": key, field: record}, indent=1))
    except OSError as error:
        warnings.warn(f"{path}: cannot cache the {what} ({error})", stacklevel=3)
        return None
    return path
