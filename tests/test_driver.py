"""convc/driver.py: a cold compile of an ONNX file reads it once (its bytes are hashed for the
compile cache, then parsed) and parses it once, for its input signature and for the import."""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.errors import ModelImportError
from convc.frontend.onnx import reader

X = np.random.default_rng(1).standard_normal((2, 2, 7, 5)).astype(np.float32)


def save_conv(path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], "once",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("N", 2, 7, 5))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_cold_compile_reads_and_parses_the_onnx_file_once(tmp_path, monkeypatch, cached):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_NO_CACHE", "" if cached else "1")
    monkeypatch.delenv("CONVC_CHECK_ARENA", raising=False)
    path = tmp_path / "once.onnx"
    save_conv(path)
    reads, parsed = [], []
    real_parse, real_bytes = reader._parse, pathlib.Path.read_bytes
    monkeypatch.setattr(reader, "_parse", lambda data, what: parsed.append(what) or real_parse(data, what))
    monkeypatch.setattr(pathlib.Path, "read_bytes",  # (the reader reads files with it too)
                        lambda self: (reads.append(str(self)) if self == path else None) or real_bytes(self))
    compiled = convc.compile(path, batch=2, threads=1)
    assert reads == [str(path)] and len(parsed) == 1
    assert compiled.run({"x": X})["y"].shape == (2, 4, 7, 5)


def test_a_damaged_file_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    path = tmp_path / "damaged.onnx"
    save_conv(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ModelImportError, match="damaged.onnx"):
        convc.compile(path, batch=2, threads=1)
