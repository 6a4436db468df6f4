"""Compiling the Winograd tile transforms (``kernels.c``) with the machine's C compiler.

The library is built once per source, compiler and CPU (``-O3 -march=native``, so the
transforms use this CPU's vector width) and cached under ``$SINGLESHOT_CACHE`` (default
``$XDG_CACHE_HOME/singleshot`` or ``~/.cache/singleshot``); later processes load the
cached file in milliseconds. The compiler is ``$CC`` or the first of ``cc``, ``gcc``,
``clang`` on the PATH. Without one, `load_kernels` raises `KernelBuildError` saying so.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["KernelBuildError", "cache_dir", "find_compiler", "load_kernels"]

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC")
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


def cache_dir() -> Path:
    """Where built kernels are kept (created on first build)."""
    configured = os.environ.get("SINGLESHOT_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "singleshot"


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags: a library built with -march=native must not
    be loaded on another CPU (a shared home folder), so they are part of the cache key."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # the first CPU's lines; the others repeat them


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


def load_kernels() -> ctypes.CDLL:
    """The compiled transforms, built on first use; raises `KernelBuildError` when impossible."""
    global _loaded
    if _loaded is not None:
        return _loaded
    compiler = find_compiler()
    if compiler is None:
        wanted = f"$CC={os.environ['CC']!r} was not found" if os.environ.get("CC") else "no cc, gcc or clang"
        raise KernelBuildError(
            f"Winograd convolutions need a C compiler to build their kernels once: {wanted} on the "
            "PATH (install gcc, or set $CC)"
        )
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS).encode(), _cpu_identity().encode()]
        )
    ).hexdigest()[:16]
    target = cache_dir() / f"winograd-{key}.so"
    if not target.exists():
        try:
            _compile(compiler, target)
        except OSError as error:
            raise KernelBuildError(f"could not build the kernels in {target.parent}: {error}") from None
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        raise KernelBuildError(f"could not load {target}: {error}") from None
    long, pointer = ctypes.c_long, ctypes.c_void_p
    library.winograd_input_transform.argtypes = [pointer, pointer] + [long] * 9
    library.winograd_input_transform.restype = None
    library.winograd_output_transform.argtypes = [pointer, pointer, pointer, ctypes.c_int] + [long] * 9
    library.winograd_output_transform.restype = None
    _loaded = library
    return library
