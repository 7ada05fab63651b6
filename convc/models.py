"""Small built-in CNNs as ONNX models with seeded random weights.

They need no download, so the CLI (``convc example``), the README and the tests can run a real
network on a fresh machine. The weights are untrained (He-initialised); the outputs are only
meaningful as numbers to compare.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8  # read by every onnxruntime since 1.10


class _Builder:
    """Appends nodes and seeded initializers to one ONNX graph; names are ``<layer>.<role>``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = self.rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.initializers.append(numpy_helper.from_array(w, name))
        return name

    def bias(self, name: str, n: int) -> str:
        b = self.rng.uniform(-0.1, 0.1, n).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(b, name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def conv(self, x: str, name: str, c_in: int, c_out: int, k: int, pad: int) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in, k, k), c_in * k * k)
        b = self.bias(f"{name}.bias", c_out)
        return self.node("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[pad] * 4, strides=[1, 1])

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def maxpool2(self, x: str, name: str) -> str:
        return self.node("MaxPool", [x], name, kernel_shape=[2, 2], strides=[2, 2])

    def flatten(self, x: str, name: str) -> str:
        return self.node("Flatten", [x], name, axis=1)

    def gemm(self, x: str, name: str, n_in: int, n_out: int) -> str:
        # weight stored (out, in) with transB=1, the layout PyTorch exports
        w = self.weight(f"{name}.weight", (n_out, n_in), n_in)
        b = self.bias(f"{name}.bias", n_out)
        return self.node("Gemm", [x, w, b], name, transB=1)

    def model(self, name: str, x: str, x_shape: list, y: str, y_shape: list, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
            initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="convc.models", doc_string=doc)
        model.ir_version = IR_VERSION
        return model


def _rename_output(b: _Builder, name: str) -> str:
    b.nodes[-1].output[0] = name
    return name


def lenet5(batch: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """LeNet-5 for 1x28x28 images (MNIST-sized), 10 class probabilities out.

    conv5x5(6, pad 2)-relu-maxpool2 -> conv5x5(16)-relu-maxpool2 -> flatten (16*5*5=400) ->
    gemm 120 -> relu -> gemm 84 -> relu -> gemm 10 -> softmax. Input ``input`` [N,1,28,28],
    output ``output`` [N,10]; the batch dimension is the symbol ``N`` when ``batch`` is None."""
    b = _Builder(seed)
    n = batch if batch is not None else "N"
    x = b.relu(b.conv("input", "conv1", 1, 6, 5, pad=2), "relu1")       # 6x28x28
    x = b.maxpool2(x, "pool1")                                            # 6x14x14
    x = b.relu(b.conv(x, "conv2", 6, 16, 5, pad=0), "relu2")             # 16x10x10
    x = b.maxpool2(x, "pool2")                                            # 16x5x5
    x = b.flatten(x, "flatten")
    x = b.relu(b.gemm(x, "fc1", 400, 120), "relu3")
    x = b.relu(b.gemm(x, "fc2", 120, 84), "relu4")
    x = b.gemm(x, "fc3", 84, 10)
    b.node("Softmax", [x], "softmax", axis=-1)
    y = _rename_output(b, "output")
    return b.model("lenet5", "input", [n, 1, 28, 28], y, [n, 10], lenet5.__doc__ or "")


def cifar_cnn(batch: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """A small VGG-style CNN for 3x32x32 images (CIFAR-sized), 10 logits out.

    [conv3x3(pad 1)-relu-maxpool2] x 3 with 32/64/128 channels -> flatten (128*4*4=2048) ->
    gemm 256 -> relu -> gemm 10. Input ``input`` [N,3,32,32], output ``output`` [N,10]; the batch
    dimension is the symbol ``N`` when ``batch`` is None."""
    b = _Builder(seed)
    n = batch if batch is not None else "N"
    x, c_in = "input", 3
    for i, c_out in enumerate((32, 64, 128), start=1):
        x = b.relu(b.conv(x, f"conv{i}", c_in, c_out, 3, pad=1), f"relu{i}")
        x = b.maxpool2(x, f"pool{i}")
        c_in = c_out
    x = b.flatten(x, "flatten")
    x = b.relu(b.gemm(x, "fc1", 128 * 4 * 4, 256), "relu4")
    b.gemm(x, "fc2", 256, 10)
    y = _rename_output(b, "output")
    return b.model("cifar_cnn", "input", [n, 3, 32, 32], y, [n, 10], cifar_cnn.__doc__ or "")


def cifar_resnet(width: int = 16):
    """A ResNet for 3x32x32 images in convc's model DSL (``convc.nn``), for training: a 3x3 stem
    (conv, BatchNorm, ReLU), six basic blocks of widths w, w, 2w, 2w, 4w, 4w (stride 2 and a 1x1
    projection where the width grows), global average pooling and 10 logits; no biases before
    BatchNorm. Its initial weights come from ``convc.nn``'s generator (``nn.manual_seed``). The compile
    benchmark's training step and the tests that pin that step's bits build it here."""
    from convc import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.proj = stride != 1 or cin != cout
            if self.proj:
                self.s, self.sb = nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)

        def forward(self, x):
            h = self.b2(self.c2(nn.relu(self.b1(self.c1(x)))))
            return nn.relu(h + (self.sb(self.s(x)) if self.proj else x))

    class Net(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
            self.blocks = nn.ModuleList([Block(w, w, 1), Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 2 * w, 1),
                                         Block(2 * w, 4 * w, 2), Block(4 * w, 4 * w, 1)])
            self.pool, self.fc = nn.GlobalAvgPool(), nn.Linear(4 * w, 10)

        def forward(self, x):
            x = nn.relu(self.b(self.c(x)))
            for b in self.blocks:
                x = b(x)
            return self.fc(nn.flatten(self.pool(x)))

    return Net(width)


@dataclass(frozen=True)
class Example:
    """A built-in model the CLI can write: ``convc example NAME``."""
    name: str
    build: Callable[..., onnx.ModelProto]
    summary: str


EXAMPLES: dict[str, Example] = {e.name: e for e in [
    Example("lenet", lenet5, "LeNet-5: 1x28x28 image -> 10 class probabilities (61.7k weights)"),
    Example("cifar", cifar_cnn, "3-block VGG-style CNN: 3x32x32 image -> 10 logits (620k weights)"),
]}
