"""The project's rule for tests that need something the machine may lack: locally they skip, and
under CI (``CI=true``) the missing requirement fails the run, since a skip there hides untested code."""

from __future__ import annotations

import importlib.util
import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(available: bool, what: str) -> None:
    """Skip the calling test when `what` is not available, or fail it under CI."""
    if available:
        return
    if under_ci():
        pytest.fail(f"{what} is missing under CI, where every test must run", pytrace=False)
    pytest.skip(f"{what} is missing")


def openvino_runs() -> bool:
    """Whether OpenVINO's CPU plugin runs here (``require``s the package). It refuses to run
    below SSE4.2, and `make test-portable` forces oneDNN down to SSE4.1; `make test` runs the
    OpenVINO tests with the machine's own instruction set."""
    require(importlib.util.find_spec("openvino") is not None, "openvino")
    return os.environ.get("DNNL_MAX_CPU_ISA", "").upper() not in ("SSE41", "SSE4_1")
