"""Which threads run the Winograd tile transforms: PyTorch's own OpenMP pool where the kernels
can share its GNU OpenMP runtime (one runtime in the process), else Python helper threads;
and which compilers get ``-fopenmp``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from ci import require
from singleshot.winograd import build as kernel_build
from singleshot.winograd import transform_weight, winograd_conv3x3
from singleshot.winograd.cache import FLAGS


def system_compiler() -> str:
    compiler = kernel_build.find_compiler()
    require(compiler is not None, "a C compiler for the Winograd kernels")
    assert compiler is not None
    return compiler


def is_gcc(compiler: str) -> bool:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.lower()
    return bool(version.strip()) and "clang" not in version


def fake_compiler(folder: Path, version: str, refuse_openmp: bool = False) -> str:
    """A compiler script that prints ``version`` for --version and otherwise runs the real
    compiler, failing (as a compiler without OpenMP support) when given -fopenmp if asked."""
    real = system_compiler()
    script = folder / f"fake-cc-{len(list(folder.glob('fake-cc-*')))}"
    refuse = 'case " $* " in *" -fopenmp "*) echo "fake-cc: unsupported option -fopenmp" >&2; exit 1;; esac\n'
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi\n'
        + (refuse if refuse_openmp else "")
        + f'exec "{real}" "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def conv_pair():
    torch.manual_seed(5)
    x = torch.randn(2, 16, 21, 19)
    weight, bias = torch.randn(24, 16, 3, 3), torch.randn(24)
    return x, weight, bias


def test_the_kernels_run_on_pytorchs_own_openmp_runtime():
    compiler = system_compiler()
    runtimes = kernel_build.openmp_runtimes()
    shared = len(runtimes) == 1 and Path(runtimes[0]).name == "libgomp.so.1" and is_gcc(compiler)
    require(shared, "PyTorch on GNU OpenMP (libgomp.so.1) and a GCC compiler")
    assert kernel_build.compile_flags(compiler) == (*FLAGS, "-fopenmp")
    kernel_build.load_kernels()
    assert kernel_build.kernels_use_openmp()
    assert kernel_build.openmp_runtimes() == runtimes  # the library's libgomp.so.1 is PyTorch's


def test_only_gcc_on_gnu_openmp_gets_openmp(fresh_build, monkeypatch):
    gnu = ["/opt/lib/torch/lib/libgomp.so.1"]
    gcc = fake_compiler(fresh_build, "gcc (GCC) 13.2.0")
    monkeypatch.setattr(kernel_build, "openmp_runtimes", lambda: gnu)
    assert kernel_build.compile_flags(gcc) == (*FLAGS, "-fopenmp")
    clang = fake_compiler(fresh_build, "clang version 18.1.8")  # its -fopenmp means libomp
    assert kernel_build.compile_flags(clang) == FLAGS
    for runtimes in ([], ["/usr/lib/libomp.so"], [*gnu, "/usr/lib/libgomp.so.1"]):
        kernel_build.compile_flags.cache_clear()
        monkeypatch.setattr(kernel_build, "openmp_runtimes", lambda runtimes=runtimes: runtimes)
        assert kernel_build.compile_flags(gcc) == FLAGS, runtimes


def test_a_compiler_without_openmp_builds_serial_kernels_that_python_threads_split(fresh_build, monkeypatch):
    compiler = fake_compiler(fresh_build, "gcc (GCC) 13.2.0", refuse_openmp=True)
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setattr(kernel_build, "openmp_runtimes", lambda: ["/opt/lib/torch/lib/libgomp.so.1"])
    kernel_build.load_kernels()
    assert not kernel_build.kernels_use_openmp()
    (built,) = fresh_build.glob("winograd-*.so")
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", str(built)], capture_output=True, text=True).stdout
        assert "NEEDED" in needed and "libgomp" not in needed
    x, weight, bias = conv_pair()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = winograd_conv3x3(x, transform_weight(weight), bias, relu=True)
    finally:
        torch.set_num_threads(previous)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1).relu()
    assert float((got.double() - reference).abs().max()) < 1e-3
