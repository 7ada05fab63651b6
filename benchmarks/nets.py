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


def _silu(n: Net, y: str) -> str:
    """x * sigmoid(x), as PyTorch exports nn.SiLU."""
    return n.node("Mul", [y, n.node("Sigmoid", [y])])


def _conv_bn_silu(n: Net, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
    return _silu(n, n.conv_bn(x, cin, cout, k, stride, group, act=None))


def _conv_bias(n: Net, x: str, cin: int, cout: int) -> str:
    w = n.const(n._name("w"), n.rng.standard_normal((cout, cin, 1, 1)) * np.sqrt(2.0 / cin))
    b = n.const(n._name("b"), n.rng.uniform(-0.1, 0.1, cout))
    return n.node("Conv", [x, w, b], kernel_shape=[1, 1])


def efficientnet_b0(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0 as torchvision exports it: SiLU as Mul(x, Sigmoid(x)), squeeze-and-excitation blocks
    (GlobalAveragePool, 1x1 conv, SiLU, 1x1 conv, Sigmoid, Mul), depthwise 3x3 and 5x5 convs."""
    n = Net(seed)
    y = _conv_bn_silu(n, "x", 3, 32, 3, 2)
    cin = 32
    for t, c, reps, s, k in ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                             (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)):
        for i in range(reps):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = y if t == 1 else _conv_bn_silu(n, y, cin, hidden, 1)
            h = _conv_bn_silu(n, h, hidden, hidden, k, stride, group=hidden)
            squeeze = max(1, cin // 4)
            se = n.node("GlobalAveragePool", [h])
            se = _silu(n, _conv_bias(n, se, hidden, squeeze))
            se = n.node("Sigmoid", [_conv_bias(n, se, squeeze, hidden)])
            h = n.node("Mul", [h, se])
            h = n.conv_bn(h, hidden, c, 1, act=None)
            y = n.node("Add", [h, y]) if stride == 1 and cin == c else h
            cin = c
    y = _conv_bn_silu(n, y, cin, 1280, 1)
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, 224, 224), n.linear(y, 1280, 1000), "efficientnet_b0")


def _bn_relu(n: Net, x: str, c: int) -> str:
    bn = [n.const(n._name(p), v) for p, v in (
        ("scale", n.rng.uniform(0.5, 1.5, c)), ("shift", n.rng.uniform(-0.1, 0.1, c)),
        ("mean", n.rng.uniform(-0.1, 0.1, c)), ("var", n.rng.uniform(0.5, 1.5, c)))]
    return n.node("Relu", [n.node("BatchNormalization", [x] + bn, epsilon=1e-5)])


def _conv(n: Net, x: str, cin: int, cout: int, k: int) -> str:
    w = n.const(n._name("w"), n.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
    return n.node("Conv", [x, w], kernel_shape=[k, k], pads=[k // 2] * 4)


def densenet121(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """DenseNet-121 (growth 32, bottleneck 4x): pre-activation BatchNorm+ReLU after every Concat."""
    n = Net(seed)
    y = n.conv_bn("x", 3, 64, 7, 2)
    y = n.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for b, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            h = _conv(n, _bn_relu(n, y, c), c, 128, 1)
            h = _conv(n, _bn_relu(n, h, 128), 128, 32, 3)
            y = n.node("Concat", [y, h], axis=1)
            c += 32
        if b < 3:
            y = _conv(n, _bn_relu(n, y, c), c, c // 2, 1)
            y = n.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
            c //= 2
    y = n.node("Flatten", [n.node("GlobalAveragePool", [_bn_relu(n, y, c)])])
    return n.model((batch, 3, 224, 224), n.linear(y, c, 1000), "densenet121")


def yolo_silu(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A YOLO-style SiLU net at 256x256: Conv+BN+SiLU everywhere, CSP blocks (Split, bottlenecks, Concat),
    a feature-pyramid top-down path (Resize x2, Concat) and 1x1 heads."""
    n = Net(seed)

    def csp(x: str, c: int, blocks: int) -> str:
        x = _conv_bn_silu(n, x, c, c, 1)
        half = c // 2
        split = n._name("split")
        outs = [split + "_a", split + "_b"]
        sizes = n._name("sizes")
        n.inits.append(numpy_helper.from_array(np.array([half, half], dtype=np.int64), sizes))
        n.nodes.append(helper.make_node("Split", [x, sizes], outs, name=split, axis=1))
        parts, h = list(outs), outs[1]
        for _ in range(blocks):
            r = _conv_bn_silu(n, _conv_bn_silu(n, h, half, half, 3), half, half, 3)
            h = n.node("Add", [h, r])
            parts.append(h)
        return _conv_bn_silu(n, n.node("Concat", parts, axis=1), half * (2 + blocks), c, 1)

    y = _conv_bn_silu(n, "x", 3, 16, 3, 2)
    feats, c = [], 16
    for cout, blocks in ((32, 1), (64, 2), (128, 2), (256, 1)):
        y = _conv_bn_silu(n, y, c, cout, 3, 2)
        y = csp(y, cout, blocks)
        feats.append(y)
        c = cout
    scales = n.const(n._name("scales"), np.array([1.0, 1.0, 2.0, 2.0]))
    up = n.node("Resize", [feats[3], "", scales], mode="nearest")
    p4 = csp(_conv_bn_silu(n, n.node("Concat", [up, feats[2]], axis=1), 384, 128, 1), 128, 1)
    up = n.node("Resize", [p4, "", scales], mode="nearest")
    p3 = csp(_conv_bn_silu(n, n.node("Concat", [up, feats[1]], axis=1), 192, 64, 1), 64, 1)
    head = _conv_bias(n, p3, 64, 85)
    return n.model((batch, 3, 256, 256), head, "yolo_silu")


def _layer_norm_2d(n: Net, x: str, c: int) -> str:
    """torchvision's LayerNorm2d: permute to channels last, LayerNorm over channels, permute back."""
    t = n.node("Transpose", [x], perm=[0, 2, 3, 1])
    t = n.node("LayerNormalization", [t, n.const(n._name("ln_g"), 1 + 0.1 * n.rng.standard_normal(c)),
                                      n.const(n._name("ln_b"), 0.1 * n.rng.standard_normal(c))], axis=-1,
               epsilon=1e-6)
    return n.node("Transpose", [t], perm=[0, 3, 1, 2])


def _conv_bias_k(n: Net, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
    w = n.const(n._name("w"), n.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k))
    b = n.const(n._name("b"), n.rng.uniform(-0.1, 0.1, cout))
    pad = k // 2 if stride == 1 else 0
    return n.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)


def convnext_small(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A ConvNeXt at 224x224 as torchvision exports ConvNeXt-T's blocks (CNBlock: depthwise 7x7, permute,
    LayerNorm, Linear 4C, GELU in its Erf form, Linear C, layer scale, permute back, residual), with a
    4x4/4 patchify stem and 2x2/2 downsampling after LayerNorm2d; stages of depth (1, 1, 3, 1) and width
    (48, 96, 192, 384), about a quarter of ConvNeXt-T's work."""
    import math
    n = Net(seed)
    widths, depths = (48, 96, 192, 384), (1, 1, 3, 1)
    y = _layer_norm_2d(n, _conv_bias_k(n, "x", 3, widths[0], 4, 4), widths[0])
    for stage, (c, depth) in enumerate(zip(widths, depths)):
        if stage:
            y = _conv_bias_k(n, _layer_norm_2d(n, y, widths[stage - 1]), widths[stage - 1], c, 2, 2)
        for _ in range(depth):
            t = n.node("Transpose", [_conv_bias_k(n, y, c, c, 7, group=c)], perm=[0, 2, 3, 1])
            t = n.node("LayerNormalization", [t, n.const(n._name("ln_g"), 1 + 0.1 * n.rng.standard_normal(c)),
                                              n.const(n._name("ln_b"), 0.1 * n.rng.standard_normal(c))],
                       axis=-1, epsilon=1e-6)
            for cin, cout in ((c, 4 * c), (4 * c, c)):
                w = n.const(n._name("fc_w"), n.rng.standard_normal((cin, cout)) / np.sqrt(cin))
                t = n.node("Add", [n.node("MatMul", [t, w]), n.const(n._name("fc_b"), n.rng.uniform(-0.1, 0.1, cout))])
                if cout == 4 * c:
                    erf = n.node("Erf", [n.node("Div", [t, n.const(n._name("sqrt2"), np.array(math.sqrt(2.0)))])])
                    t = n.node("Mul", [n.node("Mul", [t, n.node("Add", [erf, n.const(n._name("one"), np.array(1.0))])]),
                                       n.const(n._name("half"), np.array(0.5))])
            t = n.node("Mul", [t, n.const(n._name("gamma"), n.rng.uniform(0.2, 0.8, c))])  # layer scale
            y = n.node("Add", [y, n.node("Transpose", [t], perm=[0, 3, 1, 2])])
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    m = n.model((batch, 3, 224, 224), n.linear(y, widths[-1], 1000), "convnext_small")
    m.opset_import[0].version = 17  # LayerNormalization
    return m


def _resnet_bottleneck(layers: tuple[int, ...], batch: int, seed: int, name: str) -> onnx.ModelProto:
    n = Net(seed)
    y = n.conv_bn("x", 3, 64, 7, 2)
    y = n.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
        for block in range(blocks):
            s = stride if block == 0 else 1
            h = n.conv_bn(y, cin, width, 1)
            h = n.conv_bn(h, width, width, 3, s)
            h = n.conv_bn(h, width, 4 * width, 1, act=None)
            short = y if (s == 1 and cin == 4 * width) else n.conv_bn(y, cin, 4 * width, 1, s, act=None)
            y = n.node("Relu", [n.node("Add", [h, short])])
            cin = 4 * width
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, 224, 224), n.linear(y, cin, 1000), name)


def resnet50(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    return _resnet_bottleneck((3, 4, 6, 3), batch, seed, "resnet50")


def resnet101(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """ResNet-101: ResNet-50's block shapes, 23 blocks in the third stage."""
    return _resnet_bottleneck((3, 4, 23, 3), batch, seed, "resnet101")
