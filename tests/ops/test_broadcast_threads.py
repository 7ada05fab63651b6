"""Broadcasting arithmetic split between threads: the squeeze-and-excitation scale (x * s per channel),
row and column broadcasts and a plain elementwise product, at batch 16 with odd sizes, against numpy and,
inside a conv net (channels-last), onnxruntime; 1 and 2 threads."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind

SHAPES = [((16, 40, 29, 31), (16, 40, 1, 1)), ((16, 40, 29, 31), (40, 1, 1)), ((16, 7, 33), (33,)),
          ((3, 1, 5), (16, 3, 7, 1)), ((16, 9, 17), (16, 9, 17))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", [OpKind.MUL, OpKind.ADD, OpKind.SUB, OpKind.DIV])
@pytest.mark.parametrize("shapes", SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
def test_against_numpy(kind, shapes, threads):
    rng = np.random.default_rng(threads)
    xs = [rng.standard_normal(s).astype(np.float32) + (3.0 if kind is OpKind.DIV else 0.0) for s in shapes]
    g = Graph("bcast")
    for i, x in enumerate(xs):
        g.add_tensor(f"x{i}", x.shape, np.float32, TensorKind.INPUT)
    g.inputs = ["x0", "x1"]
    g.add_op(kind, NoAttrs(), ["x0", "x1"], ["y"])
    g.outputs = ["y"]
    got = convc.compile(g, threads=threads, cache=False).run({"x0": xs[0], "x1": xs[1]})["y"]
    a, b = xs[0].astype(np.float64), xs[1].astype(np.float64)
    want = {OpKind.MUL: a * b, OpKind.ADD: a + b, OpKind.SUB: a - b, OpKind.DIV: a / b}[kind].astype(np.float32)
    assert_close(got, want, 1e-6, f"{kind.value} {shapes}")


@pytest.mark.parametrize("threads", [1, 2])
def test_squeeze_and_excitation_in_a_conv_net(threads):
    """Conv -> GlobalAveragePool -> 1x1 conv + ReLU -> 1x1 conv + Sigmoid -> x * s -> 1x1 conv, batch 16."""
    rng = np.random.default_rng(4)
    c, r, h, w = 24, 6, 19, 23

    def const(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), n("GlobalAveragePool", ["a"], ["p"]),
             n("Conv", ["p", "w1", "b1"], ["q"]), n("Relu", ["q"], ["qr"]), n("Conv", ["qr", "w2", "b2"], ["e"]),
             n("Sigmoid", ["e"], ["s"]), n("Mul", ["a", "s"], ["m"]), n("Conv", ["m", "w3", "b3"], ["y"])]
    inits = [const("w0", (c, 8, 3, 3), 0.3), const("b0", (c,), 0.1), const("w1", (r, c, 1, 1), 0.3),
             const("b1", (r,), 0.1), const("w2", (c, r, 1, 1), 0.3), const("b2", (c,), 0.1),
             const("w3", (16, c, 1, 1), 0.3), const("b3", (16,), 0.1)]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 8, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((16, 8, h, w)).astype(np.float32)
    got = convc.compile(model, threads=threads, cache=False).run({"x": x})["y"]
    assert_close(got, run_onnxruntime(model, {"x": x}), 1e-4, "SE block vs onnxruntime")
