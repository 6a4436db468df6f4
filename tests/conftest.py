"""Session-wide test settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def kernel_cache(tmp_path_factory):
    """Build the Winograd C kernels into a fresh folder, not the user's ~/.cache: every test
    session exercises the build, and leaves nothing behind."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SINGLESHOT_CACHE", str(tmp_path_factory.mktemp("kernel-cache")))
    yield
    patch.undo()
