"""Small ONNX nets whose Concats the memory planner places in place: DenseNet-like (nested
Concats), Inception-like (four branches) and UNet-like (an upsampled tensor and a skip that is also
read by the next downsampling), with seeded weights and odd sizes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, a: np.ndarray, kind: str = "c") -> str:
        n = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32), n))
        return n

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True, bias: bool = True) -> str:
        w = self.const(self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)), "w")
        ins = [x, w] + ([self.const(self.rng.uniform(-0.1, 0.1, cout), "b")] if bias else [])
        y = self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return self.node("Relu", [y]) if relu else y

    def bn_relu(self, x: str, c: int) -> str:
        stats = [self.const(v, p) for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, c)), ("shift", self.rng.uniform(-0.1, 0.1, c)),
            ("mean", self.rng.uniform(-0.1, 0.1, c)), ("var", self.rng.uniform(0.5, 1.5, c)))]
        return self.node("Relu", [self.node("BatchNormalization", [x] + stats, epsilon=1e-5)])

    def model(self, x_shape: tuple[int, ...], outs: list[str], name: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m


def densenet_like(batch: int, hw: int = 15, nested: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Two dense blocks of three layers (BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv; growth 12) and a
    transition. ``nested``: y = Concat(y, h) per layer, as benchmarks/nets.py builds DenseNet-121;
    otherwise each layer concatenates all earlier features again, as torchvision exports it."""
    n = Builder(seed)
    y = n.conv("x", 3, 16, 3)
    c = 16
    for block in range(2):
        feats = [y]
        for _ in range(3):
            h = n.conv(n.bn_relu(y, c), c, 24, 1, relu=False, bias=False)
            h = n.conv(n.bn_relu(h, 24), 24, 12, 3, relu=False, bias=False)
            feats.append(h)
            y = n.node("Concat", [y, h] if nested else feats, axis=1)
            c += 12
        if block == 0:
            y = n.node("AveragePool", [n.conv(n.bn_relu(y, c), c, c // 2, 1, relu=False)], kernel_shape=[2, 2],
                       strides=[2, 2])
            c //= 2
    out = n.node("Flatten", [n.node("GlobalAveragePool", [n.bn_relu(y, c)])])
    return n.model((batch, 3, hw, hw), [out], "densenet_like")


def inception_like(batch: int, hw: int = 13, seed: int = 0,
                   widths: tuple[tuple[int, int, int, int], ...] = ((8, 12, 6, 5), (10, 8, 7, 9)),
                   bn_head: bool = False) -> onnx.ModelProto:
    """Inception modules: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3 max pool -> 1x1, concatenated,
    the four branches ``widths`` wide; ``bn_head``: BatchNorm and ReLU after the last Concat (not
    folded into a conv, so run channels first: a Transpose is the Concat's only reader)."""
    n = Builder(seed)
    y, c = n.conv("x", 3, 20, 3), 20
    for widths in widths:
        a = n.conv(y, c, widths[0], 1)
        b = n.conv(n.conv(y, c, 10, 1), 10, widths[1], 3)
        d = n.conv(n.conv(n.conv(y, c, 6, 1), 6, 6, 3), 6, widths[2], 3)
        p = n.conv(n.node("MaxPool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4), c, widths[3], 1)
        y, c = n.node("Concat", [a, b, d, p], axis=1), sum(widths)
    if bn_head:
        y = n.bn_relu(y, c)
    return n.model((batch, 3, hw, hw), [n.conv(y, c, 6, 1, relu=False)], "inception_like")


def unet_like(batch: int, hw: int = 20, seed: int = 0) -> onnx.ModelProto:
    """Two levels: each skip is read by the max pool below it and by the Concat with the upsampled
    (nearest Resize) decoder tensor."""
    n = Builder(seed)
    s1 = n.conv(n.conv("x", 3, 8, 3), 8, 8, 3)
    s2 = n.conv(n.node("MaxPool", [s1], kernel_shape=[2, 2], strides=[2, 2]), 8, 16, 3)
    mid = n.conv(n.node("MaxPool", [s2], kernel_shape=[2, 2], strides=[2, 2]), 16, 24, 3)
    scales = n.const(np.array([1, 1, 2, 2]), "scales")
    up = n.conv(n.node("Resize", [mid, "", scales], mode="nearest"), 24, 16, 3)
    y = n.conv(n.node("Concat", [up, s2], axis=1), 32, 16, 3)
    up = n.conv(n.node("Resize", [y, "", scales], mode="nearest"), 16, 8, 3)
    y = n.conv(n.node("Concat", [up, s1], axis=1), 16, 8, 3)
    return n.model((batch, 3, hw, hw), [n.conv(y, 8, 2, 1, relu=False)], "unet_like")
