"""Erf, Gelu (exact and tanh) and Mish: the compiled ops against their float64 references, ONNX models
with them against onnxruntime (standalone and fused into a conv, batch 16, odd widths, 1 and 2 threads),
and their export at opsets that predate them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_close, check_op, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.errors import GraphError
from convc.frontend.onnx.importer import import_onnx
from convc.frontend.onnx_export import export_onnx
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import GeluAttrs
from convc.passes.pipeline import pipeline

RTOL = 1e-4
# (kind, attrs, ONNX op type, its attributes, the opset it arrived in)
OPS = [(OpKind.ERF, NoAttrs(), "Erf", {}, 13), (OpKind.GELU, GeluAttrs(), "Gelu", {}, 20),
       (OpKind.GELU, GeluAttrs("tanh"), "Gelu", {"approximate": "tanh"}, 20), (OpKind.MISH, NoAttrs(), "Mish", {}, 18)]
IDS = ["erf", "gelu", "gelu-tanh", "mish"]
# activations that called scalar libm before codegen/vecmath.py: checked the same way, standalone and fused
OLDER = [(OpKind.SIGMOID, NoAttrs(), "Sigmoid", {}, 13), (OpKind.TANH, NoAttrs(), "Tanh", {}, 13),
         (OpKind.ELU, None, "Elu", {"alpha": 0.7}, 13), (OpKind.SOFTPLUS, NoAttrs(), "Softplus", {}, 13)]
OLDER_IDS = ["sigmoid", "tanh", "elu", "softplus"]


def values(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(np.float32)
    x.reshape(-1)[:10] = [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 100.0, -100.0, 3e38, -3e38]
    return x


@pytest.mark.parametrize("shape", [(37,), (3, 5, 7, 11)])
@pytest.mark.parametrize("kind,attrs,op_type,onnx_attrs,since", OPS, ids=IDS)
def test_against_the_float64_reference(kind, attrs, op_type, onnx_attrs, since, shape):
    # the helper writes ONNX opset 19, before Gelu: onnxruntime checks Gelu in the tests below instead
    check_op(kind, attrs, [values(shape)], onnx_check=since <= 19)


def single_node_model(op_type: str, onnx_attrs: dict, shape: tuple[int, ...], opset: int,
                      conv_channels: int | None = None) -> onnx.ModelProto:
    nodes, inits, src = [], [], "x"
    if conv_channels is not None:  # Conv(3x3, pad 1) -> op
        rng = np.random.default_rng(1)
        cin = shape[1]
        inits = [numpy_helper.from_array((rng.standard_normal((conv_channels, cin, 3, 3)) * 0.5).astype(np.float32),
                                         "w"),
                 numpy_helper.from_array(rng.standard_normal(conv_channels).astype(np.float32), "b")]
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4))
        src = "c"
    nodes.append(helper.make_node(op_type, [src], ["y"], **onnx_attrs))
    graph = helper.make_graph(nodes, op_type, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind,attrs,op_type,onnx_attrs,since", OPS + OLDER, ids=IDS + OLDER_IDS)
def test_standalone_matches_onnxruntime(kind, attrs, op_type, onnx_attrs, since, threads):
    shape = (16, 5, 17, 19)
    model = single_node_model(op_type, onnx_attrs, shape, since)
    x = values(shape, threads)
    got = convc.compile(model, threads=threads, cache=False).run({"x": x})["y"]
    assert_close(got, run_onnxruntime(model, {"x": x}), RTOL, f"{op_type} vs onnxruntime")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind,attrs,op_type,onnx_attrs,since", OPS[1:] + OLDER[:2], ids=IDS[1:] + OLDER_IDS[:2])
def test_fused_into_a_conv_matches_onnxruntime(kind, attrs, op_type, onnx_attrs, since, threads):
    shape = (16, 6, 23, 29)
    model = single_node_model(op_type, onnx_attrs, shape, since, conv_channels=20)
    convs = [op for op in pipeline(import_onnx(model)).order if op.kind is not OpKind.TRANSPOSE]
    assert [op.kind for op in convs] == [OpKind.CONV] and convs[0].attrs.epilogue.activation is kind
    x = values(shape, threads)
    got = convc.compile(model, threads=threads, cache=False).run({"x": x})["y"]
    assert_close(got, run_onnxruntime(model, {"x": x}), RTOL, f"Conv + {op_type} vs onnxruntime")


@pytest.mark.parametrize("kind,attrs,op_type,onnx_attrs,since", OPS, ids=IDS)
def test_export_at_the_default_opset(kind, attrs, op_type, onnx_attrs, since):
    """Opset 13 has no Gelu or Mish: the export spells them with older ops; onnxruntime runs it."""
    g = Graph("one")
    g.add_tensor("x", (4, 37), np.float32, TensorKind.INPUT)
    g.inputs = ["x"]
    g.add_op(kind, attrs, ["x"], ["y"])
    g.outputs = ["y"]
    model = export_onnx(g, dynamic_batch=False)
    assert (op_type in [nd.op_type for nd in model.graph.node]) == (since <= 13)
    x = values((4, 37))
    assert_close(run_onnxruntime(model, {"x": x}), convc.compile(g, cache=False).run({"x": x})["y"], RTOL,
                 "export vs compiled")


def test_gelu_rejects_an_unknown_approximation():
    g = Graph("bad")
    g.add_tensor("x", (4,), np.float32, TensorKind.INPUT)
    with pytest.raises(GraphError, match="approximate='erf'"):
        g.add_op(OpKind.GELU, GeluAttrs("erf"), ["x"], ["y"])
