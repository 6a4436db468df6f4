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

import os
import platform
from pathlib import Path

__all__ = ["cache_dir", "cpu_identity", "cpu_name"]


def cache_dir() -> Path:
    """The cache root, read from the environment on every call (it may not exist yet)."""
    configured = os.environ.get("SINGLESHOT_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "singleshot"


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
