"""Small float nets built with onnx.helper and quantized by onnxruntime's ``quantize_static`` (QDQ,
U8S8, per-channel weights): what the int8 tests compile and compare with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, a: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, relu: bool = True) -> str:
        w = self.rng.normal(0, (2.0 / (k * k * cin / group)) ** 0.5, (cout, cin // group, k, k))
        b = self.rng.normal(0, 0.1, cout)
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, self.const(w), self.const(b)], [y], name=y,
                                           kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=group))
        return self.relu(y) if relu else y

    def relu(self, x: str) -> str:
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def add(self, a: str, b: str) -> str:
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y], name=y))
        return y

    def head(self, x: str, c: int, classes: int) -> str:
        p, f, y = self.name("gap"), self.name("flat"), "logits"
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [p], name=p))
        self.nodes.append(helper.make_node("Flatten", [p], [f], name=f))
        w = self.rng.normal(0, (1.0 / c) ** 0.5, (classes, c))
        self.nodes.append(helper.make_node("Gemm", [f, self.const(w), self.const(np.zeros(classes))], [y],
                                           name="fc", transB=1))
        return y

    def model(self, name: str, c_in: int, hw: int, classes: int) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", c_in, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def resnet_like(seed: int = 0, hw: int = 32, width: int = 16) -> onnx.ModelProto:
    """Stem, two basic blocks (the second strided with a 1x1 projection), global pool, Gemm."""
    b = _Builder(np.random.default_rng(seed))
    x = b.conv("x", 3, width)
    y = b.conv(b.conv(x, width, width), width, width, relu=False)
    x = b.relu(b.add(x, y))
    y = b.conv(b.conv(x, width, 2 * width, stride=2), 2 * width, 2 * width, relu=False)
    x = b.relu(b.add(b.conv(x, width, 2 * width, k=1, stride=2, relu=False), y))
    b.head(x, 2 * width, 10)
    return b.model("resnet_like", 3, hw, 10)


def mobilenet_like(seed: int = 1, hw: int = 32, width: int = 16) -> onnx.ModelProto:
    """Stem, two inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1), global pool, Gemm."""
    b = _Builder(np.random.default_rng(seed))
    x = b.conv("x", 3, width, stride=2)
    for stride in (1, 2):
        e = b.conv(x, width, 4 * width, k=1)
        d = b.conv(e, 4 * width, 4 * width, stride=stride, group=4 * width)
        p = b.conv(d, 4 * width, width, k=1, relu=False)
        x = b.add(x, p) if stride == 1 else p
    b.head(x, width, 10)
    return b.model("mobilenet_like", 3, hw, 10)


def quantize(model: onnx.ModelProto, calibration: np.ndarray, per_channel: bool = True,
             activation=None, reduce_range: bool = False, qoperator: bool = False) -> onnx.ModelProto:
    """onnxruntime's quantize_static: QDQ, uint8 activations (or ``activation``), int8 weights (7-bit with
    ``reduce_range``, which onnxruntime's AVX2 kernels need to be exact: without it their vpmaddubsw
    saturates pairs of u8 x s8 products in int16); ``qoperator``: QuantFormat.QOperator (QLinearConv, and
    com.microsoft's QLinearAdd, QLinearGlobalAveragePool, QGemm) instead of QDQ."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        onnx.save(model, src)
        fmt = QuantFormat.QOperator if qoperator else QuantFormat.QDQ
        quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=per_channel,
                        activation_type=activation or QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=reduce_range)
        return onnx.load(dst)
