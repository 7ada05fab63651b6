"""Gates (x * sigmoid(x), x * hardsigmoid(x), x * clip(x + 3, 0, 6) / 6, x * 0.5 * (1 + erf(x / sqrt 2)))
become one activation: fused into
the producing Conv/Gemm's epilogue, or one elementwise kernel. Checked on the plan, against onnxruntime
on ONNX models at real sizes (batch 16, odd widths, 1 and 2 threads), and on the ONNX export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_close, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.frontend.onnx.importer import import_onnx
from convc.frontend.onnx_export import export_onnx
from convc.ops import OpKind
from convc.ops.elementwise import SwishAttrs
from convc.passes.pipeline import pipeline

RTOL = 1e-4


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def gate_nodes(kind: str, x: str, y: str, prefix: str = "") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The ONNX spelling of gate ``kind`` from x to y (as exporters of PyTorch/TF models write them)."""
    n = helper.make_node
    if kind == "silu":
        return [n("Sigmoid", [x], [prefix + "s"]), n("Mul", [x, prefix + "s"], [y])], []
    if kind == "silu_swapped":
        return [n("Sigmoid", [x], ["s"]), n("Mul", ["s", x], [y])], []
    if kind == "swish_alpha":  # x * sigmoid(1.702 x), the sigmoid GELU approximation
        return [n("Mul", [x, "alpha"], ["ax"]), n("Sigmoid", ["ax"], ["s"]), n("Mul", [x, "s"], [y])], \
            [_const("alpha", 1.702)]
    if kind == "hard_sigmoid":
        return [n("HardSigmoid", [x], ["h"], alpha=1.0 / 6.0, beta=0.5), n("Mul", [x, "h"], [y])], []
    if kind == "clip_div":  # x * relu6(x + 3) / 6
        return [n("Add", [x, "three"], ["a"]), n("Clip", ["a", "zero", "six"], ["c"]), n("Mul", [x, "c"], ["m"]),
                n("Div", ["m", "six"], [y])], [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    if kind == "clip_scaled":  # x * (relu6(3 + x) * (1/6))
        return [n("Add", ["three", x], ["a"]), n("Clip", ["a", "zero", "six"], ["c"]),
                n("Mul", ["c", "sixth"], ["d"]), n("Mul", ["d", x], [y])], \
            [_const("three", [3.0]), _const("zero", 0.0), _const("six", 6.0), _const("sixth", 1.0 / 6.0)]
    if kind == "gelu_erf":  # PyTorch's nn.GELU before opset 20
        return [n("Div", [x, "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]),
                n("Mul", [x, "p"], ["m"]), n("Mul", ["m", "half"], [y])], \
            [_const("sqrt2", 1.4142135), _const("one", 1.0), _const("half", 0.5)]
    if kind == "gelu_erf_half_first":  # 0.5 x first, x / sqrt 2 as a product
        return [n("Mul", [x, "rsqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["one", "e"], ["p"]),
                n("Mul", ["half", x], ["hx"]), n("Mul", ["hx", "p"], [y])], \
            [_const("rsqrt2", 0.70710677), _const("one", 1.0), _const("half", 0.5)]
    raise ValueError(kind)


GATE_KIND = {"silu": OpKind.SWISH, "silu_swapped": OpKind.SWISH, "swish_alpha": OpKind.SWISH,
             "hard_sigmoid": OpKind.HARD_SWISH, "clip_div": OpKind.HARD_SWISH, "clip_scaled": OpKind.HARD_SWISH,
             "gelu_erf": OpKind.GELU, "gelu_erf_half_first": OpKind.GELU}


def conv_gate_model(gate: str, n: int, cin: int, cout: int, h: int, w: int, group: int = 1, k: int = 3,
                    seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cout, cin // group, k, k)) * (2.0 / (cin // group * k * k)) ** 0.5)
    bias = rng.standard_normal(cout) * 0.5
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], pads=[k // 2] * 4, group=group)]
    gnodes, inits = gate_nodes(gate, "conv_out", "y")
    graph = helper.make_graph(nodes + gnodes, f"conv_{gate}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[_const("w", weight), _const("b", bias)] + inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def plan_ops(model: onnx.ModelProto):
    """The planned kernels, less the layout changes at the model's edges."""
    return [op for op in pipeline(import_onnx(model)).order if op.kind is not OpKind.TRANSPOSE]


def check_against_onnxruntime(model: onnx.ModelProto, x: np.ndarray, threads: int) -> None:
    got = convc.compile(model, threads=threads, cache=False).run({"x": x})["y"]
    assert_close(got, run_onnxruntime(model, {"x": x}), RTOL, "convc vs onnxruntime")


@pytest.mark.parametrize("gate", list(GATE_KIND))
def test_conv_gate_is_one_fused_kernel(gate):
    """Conv -> gate: the plan is the Conv alone, the gate its epilogue activation."""
    (op,) = plan_ops(conv_gate_model(gate, 2, 3, 8, 9, 11))
    assert op.kind is OpKind.CONV
    assert op.attrs.epilogue.activation is GATE_KIND[gate]
    if gate == "swish_alpha":
        assert op.attrs.epilogue.activation_attrs == SwishAttrs(np.float32(1.702))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gate", ["silu", "hard_sigmoid", "clip_div", "gelu_erf"])
def test_conv_gate_matches_onnxruntime_at_real_sizes(gate, threads):
    """Batch 16, 33 x 35 images (vector remainders on every row), a 3x3 conv of 16 -> 24 channels."""
    model = conv_gate_model(gate, 16, 16, 24, 33, 35, seed=threads)
    x = np.random.default_rng(threads).standard_normal((16, 16, 33, 35)).astype(np.float32) * 2
    check_against_onnxruntime(model, x, threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_and_pointwise_silu_as_in_efficientnet(threads):
    """EfficientNet's MBConv body: 1x1 expand + SiLU, depthwise 3x3 + SiLU, at batch 16 and 29 x 31."""
    rng = np.random.default_rng(3)
    c, e = 16, 48
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"])]
    nodes += gate_nodes("silu", "c1", "s1", prefix="expand_")[0]
    nodes.append(helper.make_node("Conv", ["s1", "w2", "b2"], ["c2"], pads=[1] * 4, group=e))
    nodes += gate_nodes("silu", "c2", "y", prefix="depthwise_")[0]
    inits = [_const("w1", rng.standard_normal((e, c, 1, 1)) * 0.3), _const("b1", rng.standard_normal(e)),
             _const("w2", rng.standard_normal((e, 1, 3, 3)) * 0.4), _const("b2", rng.standard_normal(e))]
    graph = helper.make_graph(nodes, "mbconv_silu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, c, 29, 31])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ops = plan_ops(model)
    convs = [op for op in ops if op.kind is OpKind.CONV]
    assert len(convs) == 2 and all(op.attrs.epilogue.activation is OpKind.SWISH for op in convs)
    assert not [op for op in ops if op.kind in (OpKind.SIGMOID, OpKind.MUL)]
    x = rng.standard_normal((16, c, 29, 31)).astype(np.float32)
    check_against_onnxruntime(model, x, threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_silu_epilogue(threads):
    """A fully connected layer with 37 outputs (a masked vector at the N edge) and SiLU, batch 16."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["c"], transB=1)]
    gnodes, _ = gate_nodes("silu", "c", "y")
    graph = helper.make_graph(nodes + gnodes, "gemm_silu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 50])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[_const("w", rng.standard_normal((37, 50)) * 0.3),
                                           _const("b", rng.standard_normal(37))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (op,) = plan_ops(model)
    assert op.kind is OpKind.GEMM and op.attrs.epilogue.activation is OpKind.SWISH
    check_against_onnxruntime(model, (rng.standard_normal((16, 50)) * 3).astype(np.float32), threads)


def standalone_model(gate: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    gnodes, inits = gate_nodes(gate, "x", "y")
    graph = helper.make_graph(gnodes, f"standalone_{gate}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gate", list(GATE_KIND))
def test_standalone_gate_is_one_elementwise_kernel(gate, threads):
    """Not after a conv (a graph input here): one unary kernel over 16 x 7 x 33 x 35 values."""
    shape = (16, 7, 33, 35)
    model = standalone_model(gate, shape)
    (op,) = plan_ops(model)
    assert op.kind is GATE_KIND[gate]
    x = (np.random.default_rng(7).standard_normal(shape) * 4).astype(np.float32)
    x.reshape(-1)[:6] = [0.0, -0.0, 3.0, -3.0, 90.0, -90.0]
    check_against_onnxruntime(model, x, threads)


def test_gate_whose_sigmoid_is_also_an_output_is_left_alone():
    """The Sigmoid's value is a graph output: fusing would lose it, so Conv, Sigmoid and Mul stay."""
    model = conv_gate_model("silu", 2, 3, 4, 5, 7)
    model.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    assert [op.kind for op in plan_ops(model)] == [OpKind.CONV, OpKind.SIGMOID, OpKind.MUL]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    got = convc.compile(model, cache=False).run({"x": x})
    import onnxruntime as ort
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_close(got["y"], want[0], RTOL, "y")
    assert_close(got["s"], want[1], RTOL, "s")


@pytest.mark.parametrize("nodes", [
    # x / sigmoid(x) is not a gate
    [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Div", ["x", "s"], ["y"])],
    # the sigmoid of another tensor
    [helper.make_node("Tanh", ["x"], ["n"]), helper.make_node("Sigmoid", ["n"], ["s"]),
     helper.make_node("Mul", ["x", "s"], ["y"])],
    # hard sigmoid with other constants (Keras' 0.2, 0.5) is not HardSwish
    [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=0.2, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"])],
    # erf of x / 2, not x / sqrt 2
    [helper.make_node("Div", ["x", "two"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
     helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
     helper.make_node("Mul", ["m", "half"], ["y"])],
], ids=["div", "other-operand", "hard-sigmoid-0.2", "erf-of-x-over-2"])
def test_lookalikes_are_not_rewritten(nodes):
    inits = [_const("two", 2.0), _const("one", 1.0), _const("half", 0.5)]
    used = {i for nd in nodes for i in nd.input}
    graph = helper.make_graph(nodes, "lookalike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[t for t in inits if t.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert not {OpKind.SWISH, OpKind.HARD_SWISH, OpKind.GELU} & {op.kind for op in plan_ops(model)}
    x = np.random.default_rng(1).standard_normal((4, 37)).astype(np.float32) * 3
    check_against_onnxruntime(model, x, 1)


@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_swish_exports_as_sigmoid_and_mul_below_opset_24(alpha):
    """Swish is ONNX opset 24; at the default opset 13 the export spells x * Sigmoid(alpha x)."""
    from convc.ir import Graph, TensorKind
    g = Graph("swish")
    g.add_tensor("x", (3, 37), np.float32, TensorKind.INPUT)
    g.inputs = ["x"]
    g.add_op(OpKind.SWISH, SwishAttrs(alpha), ["x"], ["y"])
    g.outputs = ["y"]
    model = export_onnx(g, dynamic_batch=False)
    assert "Swish" not in [nd.op_type for nd in model.graph.node]
    x = np.random.default_rng(2).standard_normal((3, 37)).astype(np.float32) * 4
    want = (x.astype(np.float64) / (1 + np.exp(-alpha * x.astype(np.float64)))).astype(np.float32)
    assert_close(run_onnxruntime(model, {"x": x}), want, RTOL, "exported Swish in onnxruntime")
    assert_close(convc.compile(g, cache=False).run({"x": x})["y"], want, RTOL, "compiled Swish")
