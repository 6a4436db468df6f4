"""The project's rule for tests that need something the machine may lack: locally they skip, and
under CI (``CI=true``) the missing requirement fails the run, since a skip there hides untested code."""

from __future__ import annotations

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
