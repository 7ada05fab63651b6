"""Channels-last convs with an input scale S[image, c] (a squeeze-and-excitation Mul fused into the conv,
codegen/kernels/conv_nhwc.py ``_scaled_pixel_tiles``): per image, each thread scales either its panels of
the packed weights or, for a 1x1 stride-1 conv without padding, its pixels of X, whichever is fewer
floats (pixels against panels x NR columns, NR = 16 on AVX2). Each case below takes the branch its
comment names on an AVX2 host; all are checked against numpy in float64 on 1 and 2 threads."""
from __future__ import annotations

import re

import numpy as np
import pytest

import convc
from convc.codegen.module import emit_module
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.options import CompileOptions
from convc.passes.pipeline import pipeline

# (X shape NHWC, M, kernel, stride)
CONVS = [
    ((3, 5, 7, 13), 7, 1, 1),      # 35 pixels an image against one panel of 16 columns: the weights
    ((3, 5, 3, 33), 70, 1, 1),     # 15 pixels against 80 columns: X; C = 33 leaves 1 float past 4 vectors;
                                   # on 2 threads 15 pixel rows split 8 / 7, mid-image
    ((1, 1, 40, 24), 70, 1, 1),    # one pixel row, 2 threads split the 5 panels: thread 0 has 48 columns
                                   # for 40 pixels (X), thread 1 32 (the weights), in the same call
    ((16, 7, 7, 96), 160, 1, 1),   # EfficientNet's 7x7 projections at batch 16: 49 pixels against 160: X
    ((2, 9, 11, 24), 40, 3, 2),    # a strided 3x3 window: the weights (X is not scaled in place of them)
]


def scaled_conv_graph(seed: int = 0) -> Graph:
    """The CONVS side by side: y_i = conv(x_i * s_i, w_i) + b_i, s_i [N, 1, 1, C]."""
    rng = np.random.default_rng(seed)
    g = Graph("scaled_convs")
    for i, (x_shape, m, k, stride) in enumerate(CONVS):
        g.add_tensor(f"x{i}", x_shape, np.float32, TensorKind.INPUT)
        g.add_tensor(f"s{i}", (x_shape[0], 1, 1, x_shape[3]), np.float32, TensorKind.INPUT)
        g.add_constant(f"w{i}", rng.standard_normal((m, x_shape[3], k, k)).astype(np.float32))
        g.add_constant(f"b{i}", rng.standard_normal(m).astype(np.float32))
        attrs = ConvAttrs((k, k), (stride, stride), (0, 0, 0, 0), (1, 1), 1, Epilogue(), "NHWC", input_scale=True)
        g.add_op(OpKind.CONV, attrs, [f"x{i}", f"w{i}", f"b{i}", f"s{i}"], [f"y{i}"], name=f"conv{i}")
    g.inputs = [f"{t}{i}" for i in range(len(CONVS)) for t in "xs"]
    g.outputs = [f"y{i}" for i in range(len(CONVS))]
    return g


def reference(x: np.ndarray, s: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """conv(x * s, w) + b in float64, channels last, no padding."""
    xs = x.astype(np.float64) * s
    m, _, k, _ = w.shape
    n, h, w_, _ = x.shape
    oh, ow = (h - k) // stride + 1, (w_ - k) // stride + 1
    y = np.zeros((n, oh, ow, m)) + b
    for i in range(k):
        for j in range(k):
            window = xs[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            y += window @ w[:, :, i, j].T.astype(np.float64)
    return y


@pytest.mark.parametrize("threads", [1, 2])
def test_scaled_convs_match_numpy(threads):
    g = scaled_conv_graph(seed=threads)
    rng = np.random.default_rng(10 + threads)
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    for i in range(len(CONVS)):  # sigmoid-like scales, as a squeeze-and-excitation block makes them
        feeds[f"s{i}"] = rng.uniform(0.0, 1.0, g.tensor(f"s{i}").shape).astype(np.float32)
    model = convc.compile(g, threads=threads, cache=False)
    assert all(model.graph.op(f"conv{i}").attrs.algorithm is ConvAlgorithm.IMPLICIT_GEMM_NHWC
               for i in range(len(CONVS)))
    got = model.run(feeds)
    for i, (_, _, _, stride) in enumerate(CONVS):
        want = reference(feeds[f"x{i}"], feeds[f"s{i}"], g.tensor(f"w{i}").data, g.tensor(f"b{i}").data, stride)
        assert got[f"y{i}"].shape == want.shape and got[f"y{i}"].dtype == np.float32
        err = np.abs(got[f"y{i}"] - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-5, (CONVS[i], threads, err)


def test_only_dense_scaled_convs_can_scale_x():
    """The copy of X scaled by S is made only where the tiles can read it in place of X: a 1x1 stride-1
    conv without padding (its loop over X's rows, ``xrow``, is in those kernels alone); every scaled conv
    can scale its weights instead (``wtap``)."""
    native = emit_module(pipeline(scaled_conv_graph(), options=CompileOptions(threads=2)), threads=2)
    kernels = {k.split("(", 1)[0].split("@")[-1].strip('"'): k for k in str(native.ir_module).split("\ndefine ")[1:]}
    convs = {name: k for name, k in kernels.items() if re.fullmatch(r"conv\d+", name)}
    assert sorted(convs) == [f"conv{i}" for i in range(len(CONVS))]
    assert sorted(name for name, k in convs.items() if "xrow.header" in k) == ["conv0", "conv1", "conv2", "conv3"]
    assert all("wtap.header" in k for k in convs.values())
