"""ConvNeXt blocks (depthwise 7x7, permute to channels last, LayerNorm over channels, Linear 4C, GELU, Linear C,
layer scale, permute back, residual), as PyTorch exports them: the model's own permutes become the layout
pass's twins (no Transpose left but the model's edges), each Linear (MatMul by a constant) a channels-last
1x1 conv whose bias Add, layer-scale Mul and GELU fuse into it (passes/fusion.py ``matmul_as_pointwise_conv``;
the GELU runs over each finished register tile, codegen/kernels/conv_nhwc.py). Against onnxruntime at batch
16 and 1 with odd sizes and widths that leave partial tiles and panels, 1 and 2 threads."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from concat_nets import Builder
from helpers import assert_close, run_onnxruntime

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm
from convc.passes.pipeline import pipeline

RTOL = 2e-5  # GELU is 6 ulp (codegen/vecmath.py); the two Linears sum 20 and 80 products


def convnext(batch: int, h: int, w: int, c: int, blocks: int = 2, bias_first: bool = False) -> onnx.ModelProto:
    """A stem conv, then ``blocks`` ConvNeXt blocks of width ``c``. ``bias_first``: Add(bias, MatMul) and
    Mul(gamma, y), the operands the other way round."""
    n = Builder(9)
    x = n.conv("x", 3, c, 3, relu=False)
    for _ in range(blocks):
        t = _depthwise(n, x, c)
        t = n.node("Transpose", [t], perm=[0, 2, 3, 1])
        t = n.node("LayerNormalization", [t, n.const(1 + 0.1 * n.rng.standard_normal(c)),
                                          n.const(0.1 * n.rng.standard_normal(c))], axis=-1, epsilon=1e-6)
        for cin, cout in ((c, 4 * c), (4 * c, c)):
            mm = n.node("MatMul", [t, n.const(n.rng.standard_normal((cin, cout)) / math.sqrt(cin))])
            bias = n.const(0.1 * n.rng.standard_normal(cout))
            t = n.node("Add", [bias, mm] if bias_first else [mm, bias])
            if cout == 4 * c:
                erf = n.node("Erf", [n.node("Div", [t, n.const(np.float32(math.sqrt(2.0)))])])
                t = n.node("Mul", [n.node("Mul", [t, n.node("Add", [erf, n.const(np.float32(1.0))])]),
                                   n.const(np.float32(0.5))])
        gamma = n.const(n.rng.uniform(0.2, 0.8, c))
        t = n.node("Mul", [gamma, t] if bias_first else [t, gamma])  # layer scale
        x = n.node("Add", [x, n.node("Transpose", [t], perm=[0, 3, 1, 2])])
    m = n.model((batch, 3, h, w), [x], "convnext")
    m.opset_import[0].version = 17  # LayerNormalization
    return m


def _depthwise(n: Builder, x: str, c: int) -> str:
    wt = n.const(n.rng.standard_normal((c, 1, 7, 7)) / 7.0, "w")
    return n.node("Conv", [x, wt, n.const(0.1 * n.rng.standard_normal(c), "b")], kernel_shape=[7, 7], pads=[3] * 4,
                  group=c)


# (batch, H, W, C, bias_first, threads)
CASES = [(16, 29, 23, 20, False, 2), (16, 13, 17, 24, True, 1), (1, 31, 27, 36, False, 2)]


def input_shape(m: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)


def test_convnext_block_plan():
    """Per block: the depthwise conv, LayerNorm, two 1x1 convs (bias and GELU, bias and layer scale), the
    residual Add; layout changes only at the edges."""
    plan = pipeline(import_onnx(convnext(16, 29, 23, 20), batch=16))
    kinds = [op.kind for op in plan.order]
    assert kinds.count(OpKind.TRANSPOSE) == 2, kinds
    assert OpKind.MATMUL not in kinds and kinds.count(OpKind.MUL) == 0 and kinds.count(OpKind.ADD) == 2
    linears = [op for op in plan.order if op.kind is OpKind.CONV and op.attrs.kernel_shape == (1, 1)]
    assert len(linears) == 4
    for op in linears:
        assert op.attrs.algorithm is ConvAlgorithm.IMPLICIT_GEMM_NHWC and len(op.inputs) == 3  # X, W, bias
    assert [op.attrs.epilogue.activation for op in linears] == [OpKind.GELU, None] * 2


@pytest.mark.parametrize("case", CASES, ids=[f"b{b}-{h}x{w}-c{c}{'-bias-first' if f else ''}-t{t}"
                                            for b, h, w, c, f, t in CASES])
@pytest.mark.slow
def test_convnext_block_matches_onnxruntime(case):
    batch, h, w, c, bias_first, threads = case
    model = convnext(batch, h, w, c, bias_first=bias_first)
    x = np.random.default_rng(4).standard_normal(input_shape(model)).astype(np.float32)
    (actual,) = convc.compile(model, threads=threads, cache=False).run({"x": x}).values()
    assert_close(actual, run_onnxruntime(model, {"x": x}), RTOL, f"ConvNeXt {case} against onnxruntime")


def test_a_matmul_of_a_run_time_matrix_stays_a_matmul():
    """Only a constant right-hand side is a conv's weight."""
    n = Builder(3)
    t = n.node("Transpose", [n.conv("x", 3, 8, 3, relu=False)], perm=[0, 2, 3, 1])
    y = n.node("MatMul", [t, n.node("Transpose", [t], perm=[0, 1, 3, 2])])
    plan = pipeline(import_onnx(n.model((2, 3, 5, 5), [y], "matmul"), batch=2))
    assert [op.kind for op in plan.order].count(OpKind.MATMUL) == 1
