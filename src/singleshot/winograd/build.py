"""Compiling the Winograd kernels (``kernels.c``: tile transforms and products) with the machine's C compiler.

The library is built once per source, compiler, flags and CPU (``-O3 -march=native``, so
the kernels use this CPU's vector width, capped like PyTorch's by ``ATEN_CPU_CAPABILITY``)
and cached (see `singleshot.winograd.cache`);
later processes load the cached file in milliseconds. The first build prints one line
to stderr, since it takes a few seconds; ``singleshot build-kernels`` runs it on request.
The compiler is ``$CC`` or the first of ``cc``, ``gcc``, ``clang`` on the PATH. Without
one, `load_kernels` raises `KernelBuildError` saying so.

Where PyTorch runs its threads on GNU OpenMP (``libgomp.so.1``, as its Linux wheels do)
and the compiler is GCC, the library is built with ``-fopenmp``: its ``libgomp.so.1`` is
then the one already loaded, and the transforms run on PyTorch's own thread pool
(`kernels_use_openmp`). Otherwise, or if that build fails, the transforms are built
without OpenMP and `singleshot.winograd.ops` splits their tiles between Python threads.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cache import FLAGS, SOURCE, cache_dir, kernel_path

__all__ = [
    "KernelBuildError",
    "build_kernels",
    "cache_dir",
    "compile_flags",
    "declare_signatures",
    "find_compiler",
    "kernel_flags",
    "kernels_use_openmp",
    "load_kernels",
    "openmp_runtimes",
    "target_flags",
]

NATIVE = "-march=native"
OPENMP = "-fopenmp"
GNU_OPENMP = "libgomp.so.1"
# PyTorch's ATEN_CPU_CAPABILITY caps its kernels at an instruction set; ours follow the cap, so
# that a forced run (portability tests, AVX2 timings on an AVX-512 CPU) runs our narrower code too
CAPABILITY_FLAGS = {"avx512": (NATIVE,), "avx2": (NATIVE, "-mno-avx512f"), "default": ()}

_loaded: ctypes.CDLL | None = None
_openmp = False


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


def openmp_runtimes() -> list[str]:
    """The OpenMP runtime libraries mapped into this process (paths; Linux only, else [])."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    names = ("libgomp", "libomp", "libiomp")
    fields = (line.split(maxsplit=5) for line in lines)
    paths = {parts[5] for parts in fields if len(parts) == 6}  # address perms offset dev inode path
    return sorted(path for path in paths if Path(path).name.startswith(names))


@functools.cache
def compile_flags(compiler: str) -> tuple[str, ...]:
    """The flags `build_kernels` passes ``compiler`` (before ``-march=native``): `FLAGS`, plus
    ``-fopenmp`` when PyTorch's OpenMP runtime is GNU's ``libgomp.so.1`` and ``compiler`` is
    GCC, so that the library shares that runtime (clang's ``-fopenmp`` means another one)."""
    runtimes = openmp_runtimes()
    if len(runtimes) != 1 or Path(runtimes[0]).name != GNU_OPENMP:
        return FLAGS
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return FLAGS
    if "clang" in version.lower() or not version.strip():
        return FLAGS
    return (*FLAGS, OPENMP)


def target_flags() -> tuple[str, ...]:
    """The instruction-set flags: ``-march=native``, capped as PyTorch's kernels are when
    ``ATEN_CPU_CAPABILITY`` is set (``avx2``: without AVX-512; ``default``: the compiler's
    baseline, SSE2 on x86-64). Read at each build, so a changed variable gets its own library."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    return CAPABILITY_FLAGS.get(capability, (NATIVE,))


def kernel_flags(compiler: str) -> tuple[str, ...]:
    """Every flag `build_kernels` passes ``compiler``: `compile_flags`, then `target_flags`."""
    return (*compile_flags(compiler), *target_flags())


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    flags, isa = compile_flags(compiler), target_flags()
    # Build under a temporary name and rename: processes building at once never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        errors = ""
        # a compiler without -march=native still gets a portable build, one without OpenMP a serial one
        attempts = [(native, openmp) for native in (True, False) for openmp in (OPENMP in flags, False)]
        for native, openmp in dict.fromkeys(attempts):
            chosen = [flag for flag in flags if flag != OPENMP or openmp]
            command = [compiler, *chosen, *(isa if native else ()), "-o", str(partial), str(SOURCE)]
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
    target = kernel_path(compiler, kernel_flags(compiler))
    if target.exists():
        return target, False
    note = f"singleshot: compiling the Winograd kernels once for this CPU: {compiler} -> {target}"
    print(note, file=sys.stderr)
    try:
        _compile(compiler, target)
    except OSError as error:
        raise KernelBuildError(f"could not build the kernels in {target.parent}: {error}") from None
    return target, True


def declare_signatures(library: ctypes.CDLL) -> ctypes.CDLL:
    """Give ``library``'s kernel functions (``kernels.c``) their C argument and result types;
    returns it."""
    long, pointer, integer = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
    library.winograd_input_transform.argtypes = [pointer, pointer, *[long] * 9, integer]
    library.winograd_input_transform.restype = None
    library.winograd_output_transform.argtypes = [*[pointer] * 3, *[integer] * 2, *[long] * 9, integer]
    library.winograd_output_transform.restype = None
    library.winograd_products.argtypes = [pointer, pointer, pointer, *[long] * 5, integer]
    library.winograd_products.restype = None
    library.winograd_convolution.argtypes = [
        pointer,
        pointer,
        pointer,
        integer,
        integer,
        *[pointer] * 3,
        *[long] * 6,
        integer,
    ]
    library.winograd_convolution.restype = None
    library.winograd_convolution_blocks.argtypes = [
        pointer,
        pointer,
        pointer,
        integer,
        integer,
        pointer,
        pointer,
        *[long] * 6,
        integer,
    ]
    library.winograd_convolution_blocks.restype = None
    library.winograd_panel_width.argtypes = []
    library.winograd_panel_width.restype = integer
    library.winograd_openmp.argtypes = []
    library.winograd_openmp.restype = integer
    return library


def load_kernels() -> ctypes.CDLL:
    """The compiled kernels, built on first use; raises `KernelBuildError` when impossible."""
    global _loaded, _openmp
    if _loaded is not None:
        return _loaded
    target, _ = build_kernels()
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        raise KernelBuildError(f"could not load {target}: {error}") from None
    declare_signatures(library)
    # one runtime: the library's libgomp.so.1 resolved to PyTorch's, not to a second pool
    _openmp = bool(library.winograd_openmp()) and len(openmp_runtimes()) == 1
    _loaded = library
    return library


def kernels_use_openmp() -> bool:
    """Whether the loaded transforms split their tiles on PyTorch's OpenMP threads (False before
    `load_kernels`, and for a library built without OpenMP)."""
    return _openmp
