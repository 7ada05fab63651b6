"""Small ResNet- and MobileNet-style nets on scikit-learn's digits for the quantization tests.

Built with onnx.helper (Conv, BatchNormalization, Relu or Clip, residual Add, depthwise convs,
GlobalAveragePool, Gemm) and trained a few epochs by convc's own Trainer, so weights, BN statistics
and logits are those of a model that classifies real data, as quantization meets it in practice.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 16  # digits upsampled from 8x8


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): (N, 1, 16, 16) float32 in about [-1, 2]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((2, 2)))[:, None].astype(np.float32)
    x = (x - 0.3) / 0.4
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    return x[train], d.target[train], x[test], d.target[test]


class _Net:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, a: np.ndarray, kind: str = "c") -> str:
        n = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(a, np.float32), n))
        return n

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "relu") -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        y = self.op("Conv", [x, self.const(w, "w")], kernel_shape=[k, k], strides=[stride] * 2,
                    pads=[k // 2] * 4, group=group)
        bn = [self.const(self.rng.uniform(0.5, 1.5, cout)), self.const(self.rng.uniform(-0.2, 0.2, cout)),
              self.const(self.rng.uniform(-0.2, 0.2, cout)), self.const(self.rng.uniform(0.5, 1.5, cout))]
        y = self.op("BatchNormalization", [y, *bn], epsilon=1e-5)
        if act == "relu":
            y = self.op("Relu", [y])
        elif act == "relu6":
            y = self.op("Clip", [y, self.const(np.array(0.0)), self.const(np.array(6.0))])
        return y

    def model(self, out: str, name: str, batch: int | str = "N") -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [batch, 1, SIZE, SIZE])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, None])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m


def _resnet_trunk(n: _Net) -> tuple[str, int]:
    y = n.conv_bn("x", 1, 16, 3)
    cin = 16
    for cout, stride in ((16, 1), (32, 2)):
        h = n.conv_bn(y, cin, cout, 3, stride)
        h = n.conv_bn(h, cout, cout, 3, 1, act=None)
        short = y if (stride == 1 and cin == cout) else n.conv_bn(y, cin, cout, 1, stride, act=None)
        y = n.op("Relu", [n.op("Add", [h, short])])
        cin = cout
    return n.op("Flatten", [n.op("GlobalAveragePool", [y])]), cin


def _mobilenet_trunk(n: _Net) -> tuple[str, int]:
    y = n.conv_bn("x", 1, 16, 3, 2, act="relu6")
    cin = 16
    for cout, stride, expand in ((16, 1, 4), (24, 2, 4), (24, 1, 4)):
        hidden = cin * expand
        h = n.conv_bn(y, cin, hidden, 1, act="relu6")
        h = n.conv_bn(h, hidden, hidden, 3, stride, group=hidden, act="relu6")
        h = n.conv_bn(h, hidden, cout, 1, act=None)
        y = n.op("Add", [h, y]) if stride == 1 and cin == cout else h
        cin = cout
    y = n.conv_bn(y, cin, 64, 1, act="relu6")
    return n.op("Flatten", [n.op("GlobalAveragePool", [y])]), 64


TRUNKS = {"resnet": _resnet_trunk, "mobilenet": _mobilenet_trunk}


def trained(kind: str, seed: int = 0, epochs: int = 3, batch: int = 32) -> onnx.ModelProto:
    """A ``kind`` ("resnet" or "mobilenet") net trained on the digits by convc's Trainer (Adam,
    ``epochs`` passes; ~92% held-out accuracy after 2), exported to ONNX with its BN statistics."""
    import convc
    x_train, y_train, _, _ = digits()
    n = _Net(seed)
    features, width = TRUNKS[kind](n)
    w = n.rng.standard_normal((10, width)) / np.sqrt(width)
    logits = n.op("Gemm", [features, n.const(w, "fc_w"), n.const(np.zeros(10), "fc_b")], transB=1)
    trainer = convc.Trainer(n.model(logits, kind), input_shape=(batch, 1, SIZE, SIZE), loss="cross_entropy",
                            optimizer=convc.optim.Adam(3e-3), seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            trainer.step(x_train[idx], y_train[idx].astype(np.int64))
    return trainer.export_onnx()
