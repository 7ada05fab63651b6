"""Shared fixtures; also puts tests/ on sys.path so test modules can ``import helpers``."""
from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

# the JIT compile cache stays out of the suite (a test that patches the code generator must not be
# served code compiled before); tests/aot turns it on with a temporary CONVC_CACHE_DIR
os.environ.setdefault("CONVC_NO_CACHE", "1")

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test id: every case gets its own data, the same on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def channels_first_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile without the channels-last layout pass, so the channels-first kernels (im2col +
    GEMM, direct depthwise, NCHW pooling) are the ones under test."""
    from convc.passes import pipeline
    from convc.passes.layout import to_channels_last
    monkeypatch.setattr(pipeline, "PIPELINE", [step for step in pipeline.PIPELINE if step[1] is not to_channels_last])


# --- the slow mark ------------------------------------------------------------------------------
# `python -m pytest -m "not slow"` is the quick run (README.md, "Run the tests"): it runs every test
# function, a parametrized one with its first case only (in collection order) unless it marks some of
# its cases slow itself (then its own choice stands); the function's other cases carry the slow mark,
# so CI and a plain `python -m pytest` still run them all. Tests slow on their own (seconds each on a
# 2-core VM: subprocesses, big models, training runs) carry @pytest.mark.slow where they are.

@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def function(item: pytest.Item) -> str:
        return item.nodeid.split("[", 1)[0]

    cases = [item for item in items if getattr(item, "callspec", None) is not None]
    chosen = {function(item) for item in cases if item.get_closest_marker("slow") is not None}
    seen: set[str] = set()
    for item in cases:
        name = function(item)
        if name in seen and name not in chosen:
            item.add_marker(pytest.mark.slow)
        seen.add(name)
