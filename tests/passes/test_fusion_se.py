"""The squeeze-and-excitation Mul fused into the conv that reads it (passes/fusion.py ``fuse_input_scale``):
the conv reads the unscaled tensor and, per image, scales its packed weights or (a 1x1 conv, when they are
fewer floats) its pixels of X in per-thread scratch (codegen/kernels/conv_nhwc.py), so the model's scaled
tensor is never written. Checked on the plan (no Mul left, the conv has the scale as its last
input and runs as the implicit GEMM) and end to end against onnxruntime at batch 16 and 1, odd sizes that
leave partial register tiles and panels and tiles that would straddle two images, padded and strided
consumers, a fused residual, 1 and 2 threads (threads splitting pixel rows, or weight panels)."""
from __future__ import annotations

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

RTOL = 1e-5


def se_block(batch: int, h: int, w: int, c: int, m: int, k: int = 1, stride: int = 1, residual: bool = False,
             scale_read_twice: bool = False, seed: int = 0) -> onnx.ModelProto:
    """conv -> SiLU -> (GlobalAveragePool, 1x1 conv, SiLU, 1x1 conv, Sigmoid) -> Mul -> k x k conv [+ x]:
    EfficientNet's MBConv tail. ``scale_read_twice``: the scaled tensor is also a model output."""
    n = Builder(seed)
    # the shortcut first: the Add then joins the later producer, the scaled conv
    short = n.conv("x", 3, m, 3, stride=stride, relu=False) if residual else None
    y = n.conv("x", 3, c, 3, relu=False)
    y = n.node("Mul", [y, n.node("Sigmoid", [y])])
    s = n.node("GlobalAveragePool", [y])
    s = n.conv(s, c, max(2, c // 4), 1, relu=False)
    s = n.node("Mul", [s, n.node("Sigmoid", [s])])
    s = n.node("Sigmoid", [n.conv(s, max(2, c // 4), c, 1, relu=False)])
    scaled = n.node("Mul", [s, y])  # the scale first, as torchvision exports it
    out = n.conv(scaled, c, m, k, stride=stride, relu=False)
    if residual:
        out = n.node("Add", [out, short])
    return n.model((batch, 3, h, w), [out] + ([scaled] if scale_read_twice else []), "se_block")


# (batch, H, W, C, M, k, stride, residual, threads)
CASES = [
    (16, 13, 11, 20, 12, 1, 1, False, 2),  # 143 pixels per image: tiles of 6 or 8 would straddle images
    (16, 9, 7, 40, 36, 1, 1, True, 1),     # the projection conv with its residual; 36 = 2 panels + 4 lanes
    (16, 12, 10, 24, 30, 3, 2, False, 2),  # a padded, strided 3x3 consumer: the scaled zeros stay zero
    (1, 1, 5, 24, 70, 1, 1, False, 2),     # one pixel row for two threads: they split the weight panels
    (1, 15, 17, 96, 24, 1, 1, True, 2),    # batch 1, EfficientNet's widths
    (1, 7, 7, 1152, 320, 1, 1, False, 2),  # EfficientNet-B0's last projection: X scaled, not the weights
]


def input_shape(m: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)


def case_id(case) -> str:
    b, h, w, c, m, k, s, r, t = case
    return f"b{b}-{h}x{w}-{c}to{m}-k{k}s{s}{'-residual' if r else ''}-t{t}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.slow
def test_se_scale_fused_into_the_conv_matches_onnxruntime(case):
    batch, h, w, c, m, k, stride, residual, threads = case
    model = se_block(batch, h, w, c, m, k, stride, residual)
    plan = pipeline(import_onnx(model, batch=batch))
    assert not [op.name for op in plan.order if op.kind is OpKind.MUL], "the SE Mul is gone"
    (conv,) = [op for op in plan.order if op.kind is OpKind.CONV and op.attrs.input_scale]
    assert conv.attrs.algorithm is ConvAlgorithm.IMPLICIT_GEMM_NHWC
    assert plan.graph.tensor(conv.inputs[-1]).shape == (batch, 1, 1, c)
    assert conv.attrs.epilogue.residual is residual
    x = np.random.default_rng(2).standard_normal(input_shape(model)).astype(np.float32)
    (actual,) = convc.compile(model, threads=threads, cache=False).run({"x": x}).values()
    assert_close(actual, run_onnxruntime(model, {"x": x}), RTOL, f"{case_id(case)} against onnxruntime")


def test_a_scaled_tensor_read_elsewhere_keeps_its_mul():
    model = se_block(2, 7, 5, 16, 8, scale_read_twice=True)
    plan = pipeline(import_onnx(model, batch=2))
    assert [op.kind for op in plan.order].count(OpKind.MUL) == 1
    assert not any(op.kind is OpKind.CONV and op.attrs.input_scale for op in plan.order)


def test_a_constant_per_channel_scale_is_not_an_input_scale():
    """A constant scale is a BatchNorm's business (folded into the weights), not a run-time input."""
    n = Builder(1)
    y = n.conv("x", 3, 8, 3, relu=False)
    y = n.node("Mul", [y, n.const(np.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1))])
    model = n.model((2, 3, 7, 5), [n.conv(y, 8, 6, 1, relu=False)], "constant_scale")
    plan = pipeline(import_onnx(model, batch=2))
    assert not any(op.kind is OpKind.CONV and op.attrs.input_scale for op in plan.order)
