"""Elementwise layers of one op share one function, written once per module (codegen/kernels/
elementwise.py: sizes read at run time), unless they differ in what they compute, their dtypes or
which of their arguments alias (an in-place layer's function has no ``noalias`` there)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.codegen.module import emit_module
from convc.driver import load_graph
from convc.options import CompileOptions
from convc.passes.pipeline import pipeline
from tests.helpers import run_onnxruntime


def _model(nodes, inputs, inits=()):
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def in_place_model():
    """Two Relus, one in place (its input dies there) and one not; two Exps, both not in place."""
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"),
             helper.make_node("Relu", ["e"], ["r1"], name="relu_keep"),  # e is read again below
             helper.make_node("Add", ["e", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu_inplace"),  # s dies here
             helper.make_node("Exp", ["r2"], ["y"], name="exp2")]
    return _model(nodes, [("x", (16, 8, 13, 11))])


def per_channel_model():
    """Three inputs of 8, 24 and 40 channels, each scaled and shifted per channel (a BatchNorm that
    follows a Concat, as DenseNet's) and clipped (Clip 0..6, then Clip -1..1 on the last)."""
    rng = np.random.default_rng(3)
    nodes, inits, inputs = [], [], []
    for i, (c, hw) in enumerate([(8, (13, 11)), (24, (7, 9)), (40, (5, 33))]):
        inputs.append((f"x{i}", (16, c, *hw)))
        for name in ("scale", "shift"):
            inits.append(numpy_helper.from_array(rng.standard_normal((c, 1, 1)).astype(np.float32), f"{name}{i}"))
        nodes += [helper.make_node("Mul", [f"x{i}", f"scale{i}"], [f"m{i}"], name=f"mul{i}"),
                  helper.make_node("Add", [f"m{i}", f"shift{i}"], [f"a{i}"], name=f"add{i}")]
        lo, hi = (-1.0, 1.0) if i == 2 else (0.0, 6.0)
        inits += [numpy_helper.from_array(np.float32(lo), f"lo{i}"), numpy_helper.from_array(np.float32(hi), f"hi{i}")]
        nodes.append(helper.make_node("Clip", [f"a{i}", f"lo{i}", f"hi{i}"], [f"c{i}"], name=f"clip{i}"))
    g = helper.make_graph(nodes, "per_channel",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(f"c{i}", TensorProto.FLOAT, None) for i in range(3)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def _functions(model, threads=2):
    native = emit_module(pipeline(load_graph(model), options=CompileOptions(threads=threads)), threads=threads)
    return dict(native.kernel_names), native


def test_in_place_and_copying_layers_get_their_own_functions():
    fns, native = _functions(in_place_model())
    assert fns["exp2"] == fns["exp"]  # the same op, sizes at run time: one function
    assert fns["relu_inplace"] != fns["relu_keep"]  # one aliases its input, the other does not
    args = {name: native.ir_module.globals[fns[name]].args for name in ("relu_keep", "relu_inplace")}
    assert all("noalias" in a.attributes for a in args["relu_keep"][:2])
    assert not any("noalias" in a.attributes for a in args["relu_inplace"][:2])


def test_per_channel_layers_share_and_differing_attributes_do_not():
    fns, _ = _functions(per_channel_model())
    assert fns["mul0"] == fns["mul1"] == fns["mul2"] and fns["add0"] == fns["add1"] == fns["add2"]
    assert fns["clip0"] == fns["clip1"] != fns["clip2"]  # Clip 0..6 twice, then -1..1


@pytest.mark.parametrize("threads", [1, 2])
def test_shared_elementwise_functions_compute_what_onnxruntime_does(threads):
    rng = np.random.default_rng(threads)
    for model in (in_place_model(), per_channel_model()):
        feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                 for i in model.graph.input}
        compiled = convc.compile(model, threads=threads, cache=False)
        for out in model.graph.output:
            only = helper.make_model(helper.make_graph(list(model.graph.node), "one", list(model.graph.input), [out],
                                                       list(model.graph.initializer)),
                                     opset_imports=list(model.opset_import))
            only.ir_version = model.ir_version
            np.testing.assert_allclose(compiled.run(feeds)[out.name], run_onnxruntime(only, feeds), rtol=1e-5, atol=1e-6)
