"""Fixtures of the AOT / cache / embedding tests: example models, a built library, a fresh cache."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from aot_helpers import write_model  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The compile cache on, in an empty directory of this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CONVC_CACHE_DIR", str(root))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def lenet_file(model_dir) -> Path:
    return write_model(model_dir / "lenet.onnx", "lenet", batch=2)


@pytest.fixture(scope="session")
def cifar_file(model_dir) -> Path:
    return write_model(model_dir / "cifar.onnx", "cifar", batch=4)


@pytest.fixture(scope="session")
def lenet_jit(lenet_file):
    import convc
    return convc.compile(lenet_file, threads=2, cache=False)


@pytest.fixture(scope="session")
def lenet_lib(lenet_file, tmp_path_factory):
    """lenet (batch 2) built as model.so + model.h, native target, 2 threads."""
    from convc.compiler import build
    out = tmp_path_factory.mktemp("lib") / "model.so"
    return build(str(lenet_file), out, threads=2)
