"""Notebook cells (nbval) must not write to stderr: a warning there shows as a pink block to every student.
Functions kept by passed exercise checks go to a fresh folder, so no test reads a developer's own; each test
function gets its own, so one that passes a check cannot turn a notebook's "the kit's" into "yours"."""

import os
import tempfile

import pytest

os.environ["TV_UTILS_MINE"] = tempfile.mkdtemp(prefix="tv_utils_mine_")  # nbval's kernels inherit it: stays empty


@pytest.fixture(autouse=True)
def _own_mine(tmp_path, monkeypatch):
    """A test function's own folder for kept functions (its kernels and subprocesses inherit it)."""
    monkeypatch.setenv("TV_UTILS_MINE", str(tmp_path / "mine"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    outputs = getattr(item, "test_outputs", None) or []  # set by nbval's cell items only
    stderr = "".join(o.get("text", "") for o in outputs
                     if o.get("output_type") == "stream" and o.get("name") == "stderr")
    if stderr.strip():
        pytest.fail(f"the cell wrote to stderr:\n{stderr.strip()[:2000]}", pytrace=False)
    return result


def pytest_collection_modifyitems(config, items):
    """Test tiers (pyproject.toml's markers): nbval's notebook cells are `notebooks`, and a test that takes the
    `gemma` fixture (the real default model) is `model` whatever its module's mark, so `make test-fast` skips it."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)
        elif "gemma" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
