"""convc/driver.py: a cold compile of an ONNX file reads and parses the file once, for its input
signature and for the import."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.frontend.onnx import reader


def test_a_cold_compile_parses_the_onnx_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_NO_CACHE", "1")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], "once",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("N", 2, 7, 5))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "once.onnx"
    onnx.save(model, path)
    parsed = []
    real = reader._parse
    monkeypatch.setattr(reader, "_parse", lambda data, what: parsed.append(what) or real(data, what))
    compiled = convc.compile(path, batch=2, threads=1)
    assert parsed == [str(path)]
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 5)).astype(np.float32)
    assert compiled.run({"x": x})["y"].shape == (2, 4, 7, 5)
