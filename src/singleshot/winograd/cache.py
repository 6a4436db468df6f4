"""Where built Winograd kernels live, and how they are named, listed and removed.

The cache root is `singleshot.cache.cache_dir` (``$SINGLESHOT_CACHE``, else under
``$XDG_CACHE_HOME`` or ``~/.cache``; re-exported here). A built library is
``winograd-<key>.so`` in that folder, the key hashing the C source, the compiler, the
compile flags and the CPU (a library built with ``-march=native`` must not be loaded on
another CPU sharing the home folder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..cache import cache_dir, cached_files, cpu_identity, cpu_name, remove_cached

__all__ = [
    "FLAGS",
    "SOURCE",
    "cache_dir",
    "clear_kernels",
    "cpu_identity",
    "cpu_name",
    "kernel_key",
    "kernel_path",
    "list_kernels",
]

SOURCE = Path(__file__).with_name("kernels.c")
# -ffp-contract=fast: ISO C mode would keep the products' a * b + c as a multiply and an add,
# half the throughput of one fused multiply-add
FLAGS = ("-O3", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC")
PATTERN = "winograd-*.so"


def kernel_key(compiler: str, flags: Sequence[str] = FLAGS) -> str:
    """16 hex digits naming the library that ``compiler`` builds with ``flags`` from this source
    for this CPU."""
    parts = [SOURCE.read_bytes(), compiler.encode(), " ".join(flags).encode(), cpu_identity().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def kernel_path(compiler: str, flags: Sequence[str] = FLAGS) -> Path:
    """The cached library's path for ``compiler`` and ``flags`` (it may not exist yet)."""
    return cache_dir() / f"winograd-{kernel_key(compiler, flags)}.so"


def list_kernels() -> list[Path]:
    """The built libraries in the cache, sorted by name (for every compiler and CPU seen)."""
    return cached_files(PATTERN)


def clear_kernels() -> list[Path]:
    """Delete the built libraries (nothing else in the cache root); returns what was deleted.

    A process that already loaded one keeps its mapped copy; the next process rebuilds.
    """
    return remove_cached(PATTERN)
