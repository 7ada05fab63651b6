"""The architecture patterns of the CNNs in torchvision and timm, built with onnx.helper (no torch) as PyTorch
exports them, compiled at batch 16 with odd spatial sizes (29x23) on 1 and 2 threads and compared with
onnxruntime: a squeeze-and-excitation block with ReduceMean, a ConvNeXt block, ShuffleNet's channel split and
shuffle, ResNeSt's split attention."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc

N, H, W = 16, 29, 23


class Builder:
    """Nodes and initializers of one graph, with fixed-seed weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, value, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape, scale: float | None = None) -> str:
        scale = scale if scale is not None else 1.0 / math.sqrt(math.prod(shape[1:]) or 1)
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, c_in: int, c_out: int, k: int, group: int = 1) -> str:
        return self.op("Conv", [x, self.weight(c_out, c_in // group, k, k), self.weight(c_out, scale=0.1)],
                       kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def model(self, x_shape, y: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def se_block() -> onnx.ModelProto:
    """x.mean((2, 3), keepdim=True) -> conv 1x1 -> ReLU -> conv 1x1 -> sigmoid -> x * s, after a 3x3 conv."""
    b, c = Builder(1), 24
    x = b.op("Relu", [b.conv("x", 8, c, 3)])
    s = b.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
    s = b.op("Relu", [b.conv(s, c, 6, 1)])
    s = b.op("Sigmoid", [b.conv(s, 6, c, 1)])
    return b.model([N, 8, H, W], b.op("Mul", [x, s]))


def convnext_block() -> onnx.ModelProto:
    """Depthwise 7x7 -> permute to NHWC -> LayerNorm over channels -> Linear 4C -> GELU (Erf form) -> Linear C ->
    layer scale -> permute back -> + x (torchvision's CNBlock)."""
    b, c = Builder(2), 32
    x = b.conv("x", c, c, 7, group=c)
    t = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    t = b.op("LayerNormalization", [t, b.const((1 + 0.1 * b.rng.standard_normal(c)).astype(np.float32)),
                                     b.weight(c, scale=0.1)], axis=-1, epsilon=1e-6)
    t = b.op("Add", [b.op("MatMul", [t, b.weight(c, 4 * c, scale=1 / math.sqrt(c))]), b.weight(4 * c, scale=0.1)])
    erf = b.op("Erf", [b.op("Div", [t, b.const(np.float32(math.sqrt(2.0)))])])
    t = b.op("Mul", [b.op("Mul", [t, b.op("Add", [erf, b.const(np.float32(1.0))])]), b.const(np.float32(0.5))])
    t = b.op("Add", [b.op("MatMul", [t, b.weight(4 * c, c, scale=1 / math.sqrt(4 * c))]), b.weight(c, scale=0.1)])
    t = b.op("Mul", [t, b.const(np.full(c, 0.5, np.float32))])  # layer scale (1e-6 at init; trained values are larger)
    t = b.op("Transpose", [t], perm=[0, 3, 1, 2])
    return b.model([N, c, H, W], b.op("Add", ["x", t]))


def shufflenet_unit() -> onnx.ModelProto:
    """Split the channels in two, 1x1 -> depthwise 3x3 -> 1x1 on one half, Concat, channel shuffle as
    Reshape (N, 2, C/2, H, W) -> Transpose -> Reshape (N, C, H, W) (torchvision's InvertedResidual, stride 1)."""
    b, c = Builder(3), 24
    x = b.op("Relu", [b.conv("x", 3, c, 3)])
    left, right = b.op("Split", [x, b.const(np.array([c // 2, c // 2], np.int64))], n_out=2, axis=1)
    r = b.op("Relu", [b.conv(right, c // 2, c // 2, 1)])
    r = b.conv(r, c // 2, c // 2, 3, group=c // 2)
    r = b.op("Relu", [b.conv(r, c // 2, c // 2, 1)])
    y = b.op("Concat", [left, r], axis=1)
    y = b.op("Reshape", [y, b.const(np.array([N, 2, c // 2, H, W], np.int64))])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.op("Reshape", [y, b.const(np.array([N, -1, H, W], np.int64))])
    return b.model([N, 3, H, W], b.conv(y, c, 16, 1))


def split_attention() -> onnx.ModelProto:
    """ResNeSt's SplitAttn (radix 2, cardinality 1): conv to radix*C, view (N, radix, C, H, W), ReduceSum over
    the radix, global mean, 1x1 -> ReLU -> 1x1 to radix*C, the radix softmax (view (N, 1, radix, C),
    transpose, Softmax over the radix axis), weights times the splits, ReduceSum over the radix."""
    b, c, radix = Builder(4), 16, 2
    x = b.op("Relu", [b.conv("x", 8, radix * c, 3)])
    x5 = b.op("Reshape", [x, b.const(np.array([N, radix, c, H, W], np.int64))])
    gap = b.op("ReduceSum", [x5, b.const(np.array([1], np.int64))], keepdims=0)
    gap = b.op("ReduceMean", [gap], axes=[2, 3], keepdims=1)
    a = b.op("Relu", [b.conv(gap, c, 8, 1)])
    a = b.conv(a, 8, radix * c, 1)
    a = b.op("Reshape", [a, b.const(np.array([N, 1, radix, -1], np.int64))])
    a = b.op("Transpose", [a], perm=[0, 2, 1, 3])
    a = b.op("Softmax", [a], axis=1)
    a = b.op("Reshape", [a, b.const(np.array([N, radix, c, 1, 1], np.int64))])
    y = b.op("ReduceSum", [b.op("Mul", [x5, a]), b.const(np.array([1], np.int64))], keepdims=0)
    return b.model([N, 8, H, W], y)


PATTERNS = {"se_block": se_block, "convnext_block": convnext_block, "shufflenet_unit": shufflenet_unit,
            "split_attention": split_attention}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pattern_matches_onnxruntime(pattern, threads):
    import onnxruntime
    m = PATTERNS[pattern]()
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    got = convc.compile(m, threads=threads).run({"x": x})
    (got,) = got.values()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_the_se_mean_is_a_channels_last_global_pool():
    """The mean over H and W runs as the global pool kernel in the conv's channels-last layout: the only layout
    changes are the model's input and output."""
    from convc.ops import OpKind
    ops = convc.compile(se_block(), threads=1).graph.ops()
    (pool,) = [op for op in ops if op.kind is OpKind.GLOBAL_AVERAGE_POOL]
    assert str(pool.attrs.layout) == "NHWC"
    assert [op.kind for op in ops].count(OpKind.TRANSPOSE) == 2
