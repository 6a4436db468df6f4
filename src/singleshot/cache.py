"""Where singleshot keeps what it makes or fetches once per machine.

The root is ``$SINGLESHOT_CACHE`` if set, else ``$XDG_CACHE_HOME/singleshot``, else
``~/.cache/singleshot``. It holds the built Winograd kernels (`singleshot.winograd.cache`)
and, under ``weights/``, downloaded published weights and the singleshot checkpoints
converted from them (`singleshot.weights.download`). Nothing is created here: each user
of the folder creates what it writes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache root, read from the environment on every call (it may not exist yet)."""
    configured = os.environ.get("SINGLESHOT_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "singleshot"
