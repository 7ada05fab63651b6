"""The nets benchmarks/train.py trains, defined once per framework from the same layer plan.

- ``digits``: the digits CNN of the tests (conv3x3(16)-BN-ReLU-maxpool2, conv3x3(32)-BN-ReLU-maxpool2,
  flatten, dropout 0.25, linear 10) on scikit-learn's 8x8 digits.
- ``cifar_resnet``: the CIFAR ResNet of ``benchmarks/compile.py --train``: a 3x3 stem of width 16,
  three stages of two basic blocks at widths 16/32/64 (the second and third start with stride 2 and
  a 1x1 projection shortcut with BatchNorm), global average pooling, linear 10; 3x32x32 input.
- ``mobilenet_v2``: MobileNetV2 with the common CIFAR strides (3x3 stem at stride 1, the 24-channel
  stage at stride 1, so 32x32 ends at 4x4): inverted residuals with ReLU6 and depthwise 3x3 convs,
  expansion 6, channel counts times ``width`` rounded to multiples of 8 (the last 1x1 conv keeps 1280
  channels, as torchvision does below width 1.0), global average pooling, linear 10.

With PyTorch installed, ``torch_net`` builds the net and ``export_training`` writes it with
``torch.onnx.export(..., training=TrainingMode.TRAINING)``: BatchNorm and Dropout keep their training
form, which convc's Trainer imports (an eval-mode export would fold BatchNorm into the convs and drop
Dropout). Without PyTorch, ``onnx_net`` builds the same layer plan with onnx.helper and He-normal
weights, so convc can still be timed alone.
"""
from __future__ import annotations

import importlib.util
import io
import os
import warnings

import numpy as np
import onnx

NETS = ("digits", "cifar_resnet", "mobilenet_v2")
CLASSES = 10
DIGITS_C1, DIGITS_C2, DIGITS_DROPOUT = 16, 32, 0.25
RESNET_WIDTH = 16
# (expansion, channels, blocks, stride of the first block): torchvision's table with CIFAR strides
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))
MOBILENET_LAST = 1280


def input_shape(name: str, batch: int) -> tuple[int, int, int, int]:
    return (batch, 1, 8, 8) if name == "digits" else (batch, 3, 32, 32)


def batches(name: str, batch: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (x, y) batches: samples of scikit-learn's digits, or random CIFAR-sized images."""
    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
        picks = [rng.choice(len(x), batch, replace=False) for _ in range(count)]
        return [(np.ascontiguousarray(x[i]), y[i]) for i in picks]
    return [(rng.standard_normal(input_shape(name, batch)).astype(np.float32), rng.integers(0, CLASSES, batch))
            for _ in range(count)]


def _divisible(v: float, d: int = 8) -> int:
    """torchvision's channel rounding: to a multiple of d, never more than 10% below v."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def resnet_plan() -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of each basic block."""
    w = RESNET_WIDTH
    return [(w, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]


def mobilenet_plan(width: float) -> tuple[int, list[tuple[int, int, int, int]], int]:
    """(stem channels, [(in, out, stride, expansion) per inverted residual], last conv channels)."""
    stem = _divisible(32 * width)
    blocks, cin = [], stem
    for t, c, n, s in MOBILENET_STAGES:
        cout = _divisible(c * width)
        for i in range(n):
            blocks.append((cin, cout, s if i == 0 else 1, t))
            cin = cout
    return stem, blocks, _divisible(MOBILENET_LAST * max(1.0, width))


# ---- PyTorch ------------------------------------------------------------------------------------

def torch_net(name: str, width: float = 0.5, seed: int = 0):
    """The net as a PyTorch module, initialized by PyTorch's defaults under ``seed``."""
    import torch
    from torch import nn
    torch.manual_seed(seed)

    def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
            self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            layers = [conv_bn(cin, mid, 1, act=nn.ReLU6)] if expand != 1 else []
            self.body = nn.Sequential(*layers, conv_bn(mid, mid, 3, stride, mid, act=nn.ReLU6),
                                      conv_bn(mid, cout, 1, act=None))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if name == "digits":
        return nn.Sequential(nn.Conv2d(1, DIGITS_C1, 3, padding=1), nn.BatchNorm2d(DIGITS_C1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(DIGITS_C1, DIGITS_C2, 3, padding=1),
                             nn.BatchNorm2d(DIGITS_C2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Dropout(DIGITS_DROPOUT), nn.Linear(DIGITS_C2 * 2 * 2, CLASSES))
    if name == "cifar_resnet":
        blocks = [Basic(*b) for b in resnet_plan()]
        return nn.Sequential(conv_bn(3, RESNET_WIDTH), *blocks, *head, nn.Linear(4 * RESNET_WIDTH, CLASSES))
    if name == "mobilenet_v2":
        stem, plan, last = mobilenet_plan(width)
        return nn.Sequential(conv_bn(3, stem, act=nn.ReLU6), *[InvertedResidual(*b) for b in plan],
                             conv_bn(plan[-1][1], last, 1, act=nn.ReLU6), *head, nn.Linear(last, CLASSES))
    raise ValueError(f"unknown net {name!r}; choose from {', '.join(NETS)}")


def export_training(net, x: np.ndarray) -> onnx.ModelProto:
    """PyTorch's training-mode ONNX export of ``net`` (its weights keep their state-dict names)."""
    import torch
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.train(), torch.from_numpy(x), f, training=torch.onnx.TrainingMode.TRAINING,
                          input_names=["x"], output_names=["y"], dynamo=False, do_constant_folding=False,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


# ---- onnx.helper, without PyTorch ------------------------------------------------------------------

def _test_nets():
    """tests/train/nets.py (its ONNX builder and digits CNN), loaded by path: `train` here is this script."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "train", "nets.py")
    spec = importlib.util.spec_from_file_location("convc_test_train_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_net(name: str, width: float = 0.5, seed: int = 0) -> onnx.ModelProto:
    """The net built with onnx.helper and He-normal weights (for runs without PyTorch)."""
    tn = _test_nets()
    if name == "digits":
        return tn.digits_cnn(hw=8, c1=DIGITS_C1, c2=DIGITS_C2, dropout=DIGITS_DROPOUT, seed=seed)
    n = tn.Net(seed)
    zero, six = n.init("relu6.min", np.array(0.0)), n.init("relu6.max", np.array(6.0))

    def conv_bn(x, name, cin, cout, k=3, stride=1, group=1, act="Relu"):
        y = n.bn(n.conv(x, f"{name}.conv", cin, cout, k, k // 2, stride, group, bias=False), f"{name}.bn", cout)
        if act == "Relu":
            return n.node("Relu", [y])
        return n.node("Clip", [y, zero, six]) if act == "Clip" else y

    if name == "cifar_resnet":
        x = conv_bn("input", "stem", 3, RESNET_WIDTH)
        for i, (cin, cout, stride) in enumerate(resnet_plan()):
            body = conv_bn(conv_bn(x, f"b{i}.1", cin, cout, stride=stride), f"b{i}.2", cout, cout, act=None)
            short = conv_bn(x, f"b{i}.short", cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else x
            x = n.node("Relu", [n.node("Add", [body, short])])
        last = 4 * RESNET_WIDTH
    elif name == "mobilenet_v2":
        stem, plan, last = mobilenet_plan(width)
        x = conv_bn("input", "stem", 3, stem, act="Clip")
        for i, (cin, cout, stride, t) in enumerate(plan):
            mid = cin * t
            y = conv_bn(x, f"b{i}.expand", cin, mid, 1, act="Clip") if t != 1 else x
            y = conv_bn(y, f"b{i}.dw", mid, mid, 3, stride, mid, act="Clip")
            y = conv_bn(y, f"b{i}.project", mid, cout, 1, act=None)
            x = n.node("Add", [x, y]) if stride == 1 and cin == cout else y
        x = conv_bn(x, "last", plan[-1][1], last, 1, act="Clip")
    else:
        raise ValueError(f"unknown net {name!r}; choose from {', '.join(NETS)}")
    x = n.gemm(n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1), "fc", last, CLASSES)
    return n.model(["N", 3, 32, 32], x, ["N", CLASSES], name)
