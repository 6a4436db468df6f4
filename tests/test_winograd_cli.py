"""``singleshot build-kernels``: building, listing and clearing the Winograd kernel cache, and
where that cache is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ci import require
from singleshot.cli import main
from singleshot.winograd import build as kernel_build
from singleshot.winograd import cache


@pytest.fixture
def empty_cache(fresh_build, monkeypatch):
    """A cache folder that does not exist yet, for a fresh build (see conftest's fresh_build)."""
    monkeypatch.setenv("SINGLESHOT_CACHE", str(fresh_build / "cache"))
    return fresh_build / "cache"


def field(out: str, name: str) -> str:
    """The value printed after ``name:`` in build-kernels' report."""
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(name + ":"))


def test_cache_root_is_singleshot_cache_else_xdg_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SINGLESHOT_CACHE")
    assert cache.cache_dir() == tmp_path / "xdg" / "singleshot"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "singleshot"


def test_build_then_list_then_clear(empty_cache, capsys):
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")
    assert main(["build-kernels", "--list"]) == 0
    out = capsys.readouterr().out
    assert field(out, "cache") == f"{empty_cache} ($SINGLESHOT_CACHE)"
    assert field(out, "compiler") == kernel_build.find_compiler()
    key = field(out, "key").split()[0]
    assert len(key) == 16 and field(out, "built") == "0 file(s)"
    assert not empty_cache.exists()  # --list builds nothing

    assert main(["build-kernels"]) == 0
    captured = capsys.readouterr()
    built = empty_cache / f"winograd-{key}.so"
    assert built.is_file() and f"built: {built}" in captured.out
    assert "compiling the Winograd kernels" in captured.err  # the one-line note
    assert f"winograd-{key}.so" in captured.out and "<- this CPU and compiler" in captured.out

    assert main(["build-kernels"]) == 0
    captured = capsys.readouterr()
    assert f"already built: {built}" in captured.out and captured.err == ""

    (empty_cache / "download.pt").write_bytes(b"not a kernel")
    assert main(["build-kernels", "--clear"]) == 0
    assert f"removed {built}" in capsys.readouterr().out
    assert sorted(p.name for p in empty_cache.iterdir()) == ["download.pt"]


def test_without_a_compiler_build_fails_clearly_and_list_says_so(empty_cache, monkeypatch, capsys):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert main(["build-kernels"]) == 1
    assert "need a C compiler" in capsys.readouterr().err
    assert main(["build-kernels", "--list"]) == 0
    out = capsys.readouterr().out
    assert "none ($CC='no-such-compiler-here' not found" in field(out, "compiler")
    assert field(out, "key") == "none (no compiler)"


def test_a_failing_compiler_is_reported(empty_cache, monkeypatch, tmp_path, capsys):
    script = tmp_path / "broken-cc"
    script.write_text("#!/bin/sh\necho 'kernels.c: fatal error: out of paper' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    assert main(["build-kernels"]) == 1
    assert "out of paper" in capsys.readouterr().err
    assert cache.list_kernels() == []


def test_the_command_is_registered(empty_cache):
    result = subprocess.run(
        [sys.executable, "-m", "singleshot.cli", "build-kernels", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--clear" in result.stdout and "--list" in result.stdout
