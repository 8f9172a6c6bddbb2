"""Notebook cells (nbval) must not write to stderr: a warning there shows as a pink block to every student."""

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    outputs = getattr(item, "test_outputs", None) or []  # set by nbval's cell items only
    stderr = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr")
    if stderr.strip():
        pytest.fail(f"the cell wrote to stderr:\n{stderr.strip()[:2000]}", pytrace=False)
    return result
