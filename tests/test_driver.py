"""convc/driver.py: a cold compile of an ONNX file reads it once (its bytes are hashed for the
compile cache, then parsed) and parses and checks it once, for its input signature and for the
import; a model with tensors in external files gets no cache alias (its bytes do not cover them)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.errors import ModelImportError
from convc import model_file
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


@pytest.mark.parametrize("pages", [False, True], ids=["whole", "by-pages"])
@pytest.mark.parametrize("shapes", [None, {"x": (2, 2, 7, 5)}], ids=["batch", "input_shapes"])
@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_cold_compile_reads_and_parses_the_onnx_file_once(tmp_path, monkeypatch, cached, shapes, pages):
    """Read whole (a small file) or by pages (a large one: convc/model_file.py), the file is read
    once, parsed once (its structure) and checked once."""
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_NO_CACHE", "" if cached else "1")
    monkeypatch.delenv("CONVC_CHECK_ARENA", raising=False)
    if pages:
        monkeypatch.setattr(model_file, "SMALL_FILE", 0)
    path = tmp_path / "once.onnx"
    save_conv(path)
    reads, parsed, checked = [], [], []
    real_parse, real_check, real_read = reader._parse, reader._check_text, model_file.read_model_bytes
    monkeypatch.setattr(reader, "_parse", lambda data, what: parsed.append(len(data)) or real_parse(data, what))
    monkeypatch.setattr(reader, "_check_text", lambda *a: checked.append(a[1]) or real_check(*a))
    monkeypatch.setattr(model_file, "read_model_bytes", lambda p: reads.append(str(p)) or real_read(p))
    real_bytes, real_pread = pathlib.Path.read_bytes, os.pread
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: (reads.append("whole") if self == path else None)
                        or real_bytes(self))
    preads = []
    monkeypatch.setattr(os, "pread", lambda fd, n, at: preads.append((at, at + n)) or real_pread(fd, n, at))
    compiled = convc.compile(path, batch=2, threads=1, input_shapes=shapes)
    assert reads == [str(path)] + ([] if pages else ["whole"])
    assert len(checked) == 1 and len(parsed) == 1 and parsed[0] < path.stat().st_size // 2  # the structure only
    assert all(a[1] <= b[0] for a, b in zip(sorted(preads), sorted(preads)[1:]))
    assert compiled.run({"x": X})["y"].shape == (2, 4, 7, 5)


def test_a_damaged_file_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    path = tmp_path / "damaged.onnx"
    save_conv(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ModelImportError, match="damaged.onnx"):
        convc.compile(path, batch=2, threads=1)


def test_a_model_with_external_data_is_compiled_again_when_its_data_changes(tmp_path, monkeypatch):
    """The cache's source alias hashes the model file's bytes, which do not hold external tensors:
    such a model is named by no alias, so new weights in its data file are never served old code."""
    from onnx.external_data_helper import convert_model_to_external_data
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVC_CACHE_DIR", str(cache))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    monkeypatch.delenv("CONVC_CHECK_ARENA", raising=False)
    path = tmp_path / "ext.onnx"
    save_conv(path)
    model = onnx.load(str(path))
    convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save(model, str(path))
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    for scale in (1, -2):
        (tmp_path / "w.bin").write_bytes((w * scale).astype(np.float32).tobytes())
        y = convc.compile(path, batch=2, threads=1).run({"x": X})["y"]
        expected = convc.compile(onnx.load(str(path)), batch=2, threads=1, cache=False).run({"x": X})["y"]
        np.testing.assert_array_equal(y, expected)
    assert not list(cache.rglob("src-*"))
