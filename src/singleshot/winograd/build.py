"""Compiling the Winograd tile transforms (``kernels.c``) with the machine's C compiler.

The library is built once per source, compiler and CPU (``-O3 -march=native``, so the
transforms use this CPU's vector width) and cached (see `singleshot.winograd.cache`);
later processes load the cached file in milliseconds. The first build prints one line
to stderr, since it takes a few seconds; ``singleshot build-kernels`` runs it on request.
The compiler is ``$CC`` or the first of ``cc``, ``gcc``, ``clang`` on the PATH. Without
one, `load_kernels` raises `KernelBuildError` saying so.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cache import FLAGS, SOURCE, cache_dir, kernel_path

__all__ = ["KernelBuildError", "build_kernels", "cache_dir", "find_compiler", "load_kernels"]

NATIVE = "-march=native"

_loaded: ctypes.CDLL | None = None


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded (no compiler, or it failed)."""


def find_compiler() -> str | None:
    """``$CC`` if set (even if it is not found: then None), else cc, gcc or clang from the PATH."""
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _require_compiler() -> str:
    compiler = find_compiler()
    if compiler is None:
        wanted = f"$CC={os.environ['CC']!r} was not found" if os.environ.get("CC") else "no cc, gcc or clang"
        raise KernelBuildError(
            f"Winograd convolutions need a C compiler to build their kernels once: {wanted} on the "
            "PATH (install gcc, or set $CC)"
        )
    return compiler


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: processes building at once never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        errors = ""
        for native in (True, False):  # a compiler without -march=native still gets a portable build
            command = [compiler, *FLAGS, *([NATIVE] if native else []), "-o", str(partial), str(SOURCE)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(partial, target)
                return
            errors = result.stderr.strip()
    raise KernelBuildError(f"compiling {SOURCE} with {compiler} failed:\n{errors}")


def build_kernels() -> tuple[Path, bool]:
    """Build the library for this compiler and CPU unless cached.

    Returns:
        (its path, whether it was compiled now). Raises `KernelBuildError` without a
        working compiler or a writable cache.
    """
    compiler = _require_compiler()
    target = kernel_path(compiler)
    if target.exists():
        return target, False
    note = f"singleshot: compiling the Winograd kernels once for this CPU: {compiler} -> {target}"
    print(note, file=sys.stderr)
    try:
        _compile(compiler, target)
    except OSError as error:
        raise KernelBuildError(f"could not build the kernels in {target.parent}: {error}") from None
    return target, True


def load_kernels() -> ctypes.CDLL:
    """The compiled transforms, built on first use; raises `KernelBuildError` when impossible."""
    global _loaded
    if _loaded is not None:
        return _loaded
    target, _ = build_kernels()
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        raise KernelBuildError(f"could not load {target}: {error}") from None
    long, pointer = ctypes.c_long, ctypes.c_void_p
    library.winograd_input_transform.argtypes = [pointer, pointer, *[long] * 9]
    library.winograd_input_transform.restype = None
    library.winograd_output_transform.argtypes = [pointer, pointer, pointer, ctypes.c_int, *[long] * 9]
    library.winograd_output_transform.restype = None
    _loaded = library
    return library
