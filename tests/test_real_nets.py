"""Acceptance: three real network shapes, built with onnx.helper the way PyTorch exports them, compiled by
convc and compared with onnxruntime (max |convc - ort| / max(1, |ort|) < 1e-4 on every output element).

- a temporal convolution network (WaveNet/TCN style): causal dilated Conv1d, the causal padding as a Pad on
  the left of the time axis, LeakyReLU, residual connections with a 1x1 conv where the width changes;
- a DCGAN generator: ConvTranspose + BatchNormalization + ReLU from a 1x1 noise vector up to 64x64, Sigmoid;
- a depthwise-separable (MobileNet-style) classifier: depthwise 3x3 (group = channels) and pointwise 1x1
  convs, BatchNormalization, ReLU6 (Clip), global average pooling, a linear layer and LogSoftmax.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import max_rel_error
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.ops import OpKind

TOLERANCE = 1e-4


class Builder:
    """Nodes and initializers of one model, with fresh names and seeded random weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const("w", (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def batch_norm(self, x: str, c: int) -> str:
        r = self.rng
        stats = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x] + [self.const("bn", s.astype(np.float32)) for s in stats],
                       epsilon=1e-5)

    def model(self, x_name: str, x_shape: list, out: str, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)  # a well-formed model
        return model


def temporal_conv_net(channels=(8, 16, 16, 16), kernel=3, seed=0) -> onnx.ModelProto:
    """Input (N, 4, 100): residual blocks of two causal dilated convs, dilations 1, 2, 4, 8."""
    b = Builder(seed)
    x, c_in = "signal", 4
    for level, c_out in enumerate(channels):
        d = 2 ** level
        left = (kernel - 1) * d  # causal: pad the past only, so output t sees inputs <= t
        h = x
        for c in (c_in, c_out):
            h = b.op("Pad", [h, b.const("pads", np.array([0, 0, left, 0, 0, 0], np.int64))], mode="constant")
            h = b.op("Conv", [h, b.weight((c_out, c, kernel), c * kernel), b.const("b", np.zeros(c_out, np.float32))],
                     dilations=[d], kernel_shape=[kernel])
            h = b.op("LeakyRelu", [h], alpha=0.1)
        skip = x if c_in == c_out else b.op("Conv", [x, b.weight((c_out, c_in, 1), c_in)], kernel_shape=[1])
        x, c_in = b.op("LeakyRelu", [b.op("Add", [h, skip])], alpha=0.1), c_out
    out = b.op("Conv", [x, b.weight((2, c_in, 1), c_in)], kernel_shape=[1])
    return b.model("signal", ["N", 4, 100], out)


def dcgan_generator(nz=32, ngf=16, seed=1) -> onnx.ModelProto:
    """(N, nz, 1, 1) noise -> (N, 3, 64, 64) image: ConvTranspose k4 s1 p0, then k4 s2 p1 four times."""
    b = Builder(seed)
    x, c_in = "z", nz
    for i, c_out in enumerate([ngf * 8, ngf * 4, ngf * 2, ngf]):
        strides, pads = ([1, 1], [0, 0, 0, 0]) if i == 0 else ([2, 2], [1, 1, 1, 1])
        x = b.op("ConvTranspose", [x, b.weight((c_in, c_out, 4, 4), c_in * 4)], kernel_shape=[4, 4], strides=strides,
                 pads=pads)
        x, c_in = b.op("Relu", [b.batch_norm(x, c_out)]), c_out
    x = b.op("ConvTranspose", [x, b.weight((c_in, 3, 4, 4), c_in * 4)], kernel_shape=[4, 4], strides=[2, 2],
             pads=[1, 1, 1, 1])
    return b.model("z", ["N", nz, 1, 1], b.op("Sigmoid", [x]))


def depthwise_separable_net(seed=2) -> onnx.ModelProto:
    """(N, 3, 32, 32): a 3x3 stem, four depthwise-separable blocks (two strided), pooling, a linear layer."""
    b = Builder(seed)

    def relu6(h: str) -> str:
        return b.op("Clip", [h, b.const("lo", np.array(0, np.float32)), b.const("hi", np.array(6, np.float32))])

    x = relu6(b.batch_norm(b.op("Conv", ["image", b.weight((16, 3, 3, 3), 27)], kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1]), 16))
    c = 16
    for c_out, stride in [(24, 1), (32, 2), (32, 1), (64, 2)]:
        x = relu6(b.batch_norm(b.op("Conv", [x, b.weight((c, 1, 3, 3), 9)], kernel_shape=[3, 3], group=c,
                                    strides=[stride, stride], pads=[1, 1, 1, 1]), c))         # depthwise
        x = relu6(b.batch_norm(b.op("Conv", [x, b.weight((c_out, c, 1, 1), c)], kernel_shape=[1, 1]), c_out))
        c = c_out                                                                                  # pointwise
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    x = b.op("Gemm", [x, b.weight((10, c), c), b.const("fc_b", np.zeros(10, np.float32))], transB=1)
    return b.model("image", ["N", 3, 32, 32], b.op("LogSoftmax", [x], axis=1))


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


NETS = {
    "tcn": (temporal_conv_net, "signal", (4, 100), {OpKind.PAD, OpKind.CONV, OpKind.LEAKY_RELU}),
    "dcgan": (dcgan_generator, "z", (32, 1, 1), {OpKind.CONV_TRANSPOSE, OpKind.SIGMOID}),
    "depthwise_separable": (depthwise_separable_net, "image", (3, 32, 32), {OpKind.CONV, OpKind.LOG_SOFTMAX}),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("net", sorted(NETS))
def test_matches_onnxruntime(net, batch):
    build, name, shape, kinds = NETS[net]
    model = build()
    x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
    compiled = convc.compile(model, batch=batch)
    assert kinds <= {op.kind for op in compiled.graph.ops()} | {op.kind for op in convc.frontend.onnx.import_onnx(
        model, batch=batch).ops()}
    (got,) = compiled.run({name: x}).values()
    (expected,) = onnxruntime_outputs(model, {name: x})
    assert got.shape == expected.shape and got.dtype == expected.dtype
    err = max_rel_error(got, expected)
    assert err < TOLERANCE, f"{net}: max |convc - onnxruntime| / max(1, |onnxruntime|) = {err:.3g}"


@pytest.mark.slow
def test_tcn_is_causal():
    """Changing the input at time t changes no output before t (the left padding keeps the convs causal)."""
    compiled = convc.compile(temporal_conv_net(), batch=1)
    x = np.random.default_rng(7).standard_normal((1, 4, 100)).astype(np.float32)
    (y,) = compiled.run({"signal": x}).values()
    x2 = x.copy()
    x2[:, :, 60:] += 1.0
    (y2,) = compiled.run({"signal": x2}).values()
    np.testing.assert_array_equal(y[..., :60], y2[..., :60])
    assert not np.allclose(y[..., 60:], y2[..., 60:])


def test_dcgan_generator_shapes_and_range():
    compiled = convc.compile(dcgan_generator(), batch=2)
    (img,) = compiled.run({"z": np.random.default_rng(0).standard_normal((2, 32, 1, 1)).astype(np.float32)}).values()
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0.0 and img.max() <= 1.0
