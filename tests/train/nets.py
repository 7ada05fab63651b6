"""Small ONNX models for the training tests, with seeded weights (names follow PyTorch's state dict)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def weight(self, name: str, shape, fan_in: int) -> str:
        return self.init(name, self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))

    def uniform(self, name: str, n: int, lo: float = -0.1, hi: float = 0.1) -> str:
        return self.init(name, self.rng.uniform(lo, hi, n))

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int = 3, pad: int = 1, stride: int = 1,
             group: int = 1, bias: bool = True) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in // group, k, k), c_in // group * k * k)
        ins = [x, w] + ([self.uniform(f"{name}.bias", c_out)] if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group)

    def bn(self, x: str, name: str, c: int) -> str:
        return self.node("BatchNormalization", [x, self.uniform(f"{name}.weight", c, 0.5, 1.5),
                                                self.uniform(f"{name}.bias", c),
                                                self.init(f"{name}.running_mean", np.zeros(c)),
                                                self.init(f"{name}.running_var", np.ones(c))], momentum=0.9)

    def gemm(self, x: str, name: str, n_in: int, n_out: int) -> str:
        return self.node("Gemm", [x, self.weight(f"{name}.weight", (n_out, n_in), n_in),
                                  self.uniform(f"{name}.bias", n_out)], transB=1)

    def dropout(self, x: str, ratio: float) -> str:
        r = self.init(f"ratio{self.count}", np.array(ratio))
        return self.node("Dropout", [x, r])

    def model(self, x_shape, out: str, out_shape, name: str = "net") -> onnx.ModelProto:
        self.nodes[-1].output[0] = "output"  # the last node's output, which nothing else reads
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
                              initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def digits_cnn(hw: int = 8, c1: int = 16, c2: int = 32, classes: int = 10, dropout: float = 0.25, seed: int = 0,
               softmax: bool = False, conv_bias: bool = True) -> onnx.ModelProto:
    """conv3x3-BN-ReLU-maxpool2, twice, then flatten, dropout and a linear layer."""
    n = Net(seed)
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv("input", "conv1", 1, c1, bias=conv_bias), "bn1", c1)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv(x, "conv2", c1, c2, bias=conv_bias), "bn2", c2)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("Flatten", [x], axis=1)
    if dropout:
        x = n.dropout(x, dropout)
    x = n.gemm(x, "fc", c2 * (hw // 4) ** 2, classes)
    if softmax:
        x = n.node("Softmax", [x], axis=1)
    return n.model(["N", 1, hw, hw], x, ["N", classes], "digits_cnn")


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """A residual block (conv-BN-ReLU-conv-BN + skip), a strided depthwise conv, concat, global pool."""
    n = Net(seed)
    x = n.node("Relu", [n.conv("input", "stem", 2, 4)])
    y = n.bn(n.conv(n.node("Relu", [n.bn(n.conv(x, "res.conv1", 4, 4), "res.bn1", 4)]), "res.conv2", 4, 4, bias=False),
             "res.bn2", 4)
    x = n.node("Relu", [n.node("Add", [x, y])])
    d = n.conv(x, "dw", 4, 4, k=3, pad=1, stride=2, group=4)
    p = n.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = n.node("Concat", [d, p], axis=1)
    x = n.node("LeakyRelu", [x], alpha=0.1)
    x = n.node("GlobalAveragePool", [x])
    x = n.node("Flatten", [x], axis=1)
    x = n.gemm(x, "fc", 8, 5)
    return n.model(["N", 2, 6, 6], x, ["N", 5], "residual_net")


def mlp(seed: int = 0, out: int = 3, activation: str = "Sigmoid") -> onnx.ModelProto:
    """MatMul + Add (PyTorch's unfused Linear export), Tanh, Gemm, then an output activation."""
    n = Net(seed)
    x = n.node("Flatten", ["input"], axis=1)
    x = n.node("MatMul", [x, n.weight("l1.weight_t", (12, 7), 12)])
    x = n.node("Tanh", [n.node("Add", [x, n.uniform("l1.bias", 7)])])
    x = n.gemm(x, "l2", 7, out)
    x = n.node(activation, [x])
    return n.model(["N", 3, 2, 2], x, ["N", out], "mlp")


def pool_net(seed: int = 0) -> onnx.ModelProto:
    """Max pooling with overlapping windows and padding, global max pool, Softmax output."""
    n = Net(seed)
    x = n.node("Relu", [n.conv("input", "conv", 1, 3)])
    x = n.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = n.node("GlobalMaxPool", [n.node("Sigmoid", [n.conv(x, "conv2", 3, 4)])])
    x = n.gemm(n.node("Flatten", [x], axis=1), "fc", 4, 3)
    x = n.node("Softmax", [x], axis=1)
    return n.model(["N", 1, 5, 5], x, ["N", 3], "pool_net")


def autoencoder(seed: int = 0) -> onnx.ModelProto:
    """conv 3x3/2 down, ReLU, ConvTranspose 4x4/2 up, Sigmoid: a denoising-autoencoder shape (bce/mse)."""
    n = Net(seed)
    x = n.node("Relu", [n.conv("input", "enc", 1, 4, k=3, pad=1, stride=2)])
    w = n.weight("dec.weight", (4, 1, 4, 4), 4 * 16)
    x = n.node("ConvTranspose", [x, w, n.uniform("dec.bias", 1)], kernel_shape=[4, 4], strides=[2, 2],
               pads=[1, 1, 1, 1])
    x = n.node("Sigmoid", [x])
    return n.model(["N", 1, 8, 8], x, ["N", 1, 8, 8], "autoencoder")
