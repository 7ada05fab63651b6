"""CNN architectures for the benchmarks, built with onnx.helper and seeded random weights.

ResNet-18 and MobileNetV2 follow torchvision's layer shapes (BN after every conv, ReLU6 as Clip);
LeNet-5 and the small CIFAR CNN come from convc.models.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


class Net:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "relu") -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        wn = self.const(self._name("w"), w)
        y = self.node("Conv", [x, wn], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                      group=group)
        bn = [self.const(self._name(p), v) for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, cout)), ("shift", self.rng.uniform(-0.1, 0.1, cout)),
            ("mean", self.rng.uniform(-0.1, 0.1, cout)), ("var", self.rng.uniform(0.5, 1.5, cout)))]
        y = self.node("BatchNormalization", [y] + bn, epsilon=1e-5)
        if act == "relu":
            y = self.node("Relu", [y])
        elif act == "relu6":
            y = self.node("Clip", [y, self.const(self._name("lo"), np.array(0.0)),
                                   self.const(self._name("hi"), np.array(6.0))])
        return y

    def linear(self, x: str, cin: int, cout: int) -> str:
        w = self.const(self._name("fc_w"), self.rng.standard_normal((cout, cin)) / np.sqrt(cin))
        b = self.const(self._name("fc_b"), self.rng.uniform(-0.1, 0.1, cout))
        return self.node("Gemm", [x, w, b], transB=1)

    def model(self, x_shape: tuple[int, ...], out: str, name: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        return m


def resnet18(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    n = Net(seed)
    y = n.conv_bn("x", 3, 64, 7, 2)
    y = n.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            h = n.conv_bn(y, cin, cout, 3, s)
            h = n.conv_bn(h, cout, cout, 3, 1, act=None)
            short = y if (s == 1 and cin == cout) else n.conv_bn(y, cin, cout, 1, s, act=None)
            y = n.node("Relu", [n.node("Add", [h, short])])
            cin = cout
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, 224, 224), n.linear(y, 512, 1000), "resnet18")


def mobilenet_v2(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    n = Net(seed)
    y = n.conv_bn("x", 3, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, reps, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(reps):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = y if t == 1 else n.conv_bn(y, cin, hidden, 1, act="relu6")
            h = n.conv_bn(h, hidden, hidden, 3, stride, group=hidden, act="relu6")
            h = n.conv_bn(h, hidden, c, 1, act=None)
            y = n.node("Add", [h, y]) if stride == 1 and cin == c else h
            cin = c
    y = n.conv_bn(y, cin, 1280, 1, act="relu6")
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, 224, 224), n.linear(y, 1280, 1000), "mobilenet_v2")
