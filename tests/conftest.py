"""Session-wide test settings."""

import os

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests (the `fuzz` marker): "ci" is the fast, reproducible slice of every
# test run; "fuzz" is the long campaign of `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=_QUIET
)
settings.register_profile("fuzz", max_examples=1000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def kernel_cache(tmp_path_factory):
    """Build the Winograd C kernels into a fresh folder, not the user's ~/.cache: every test
    session exercises the build, and leaves nothing behind."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SINGLESHOT_CACHE", str(tmp_path_factory.mktemp("kernel-cache")))
    yield
    patch.undo()


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A Winograd kernel build into an empty cache (``tmp_path``, returned), forgetting the
    library this process loaded and the compile flags worked out so far; all restored after."""
    from singleshot.winograd import build as kernel_build

    monkeypatch.setattr(kernel_build, "_loaded", None)
    monkeypatch.setattr(kernel_build, "_openmp", kernel_build._openmp)
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path))
    kernel_build.compile_flags.cache_clear()
    yield tmp_path
    kernel_build.compile_flags.cache_clear()
