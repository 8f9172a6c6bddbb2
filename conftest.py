"""Functions kept by passed exercise checks go to a fresh folder, so no test reads a developer's own; each test
function gets its own, so one that passes a check cannot turn a notebook's "the kit's" into "yours"."""

import os
import tempfile

import pytest

os.environ["TV_UTILS_MINE"] = tempfile.mkdtemp(prefix="tv_utils_mine_")  # module-scoped servers inherit it: stays empty


@pytest.fixture(autouse=True)
def _own_mine(tmp_path, monkeypatch):
    """A test function's own folder for kept functions (its kernels and subprocesses inherit it)."""
    monkeypatch.setenv("TV_UTILS_MINE", str(tmp_path / "mine"))


def pytest_collection_modifyitems(config, items):
    """Test tiers (pyproject.toml's markers): a test that takes the `gemma` fixture (the real default model) is
    `model` whatever its module's mark, so `make test-fast` skips it."""
    for item in items:
        if "gemma" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
