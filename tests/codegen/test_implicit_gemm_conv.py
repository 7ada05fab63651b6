"""The channels-last implicit-GEMM conv kernel (codegen/kernels/conv_nhwc.py) against the numpy
reference: every fringe (pixels per register tile, output channels per panel), padding (the
zero-bordered copy), strides, dilations, the fused epilogues, splitting rows or column panels
between threads, and results identical for every thread count."""
from __future__ import annotations


import numpy as np
import pytest
from helpers import nhwc_conv_graph

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs
from convc.ops.elementwise import GeluAttrs, LeakyReluAttrs
from convc.ops.epilogue import Epilogue
from convc.reference import run_reference

EPILOGUES = {
    "none": Epilogue(),
    "relu": Epilogue(False, OpKind.RELU),
    "residual+leaky": Epilogue(True, OpKind.LEAKY_RELU, LeakyReluAttrs(0.1)),
    "tanh": Epilogue(False, OpKind.TANH),  # no vector form: a scalar pass after the kernel
    # too long for the register tile: over each finished tile's rows, after the residual
    "residual+gelu": Epilogue(True, OpKind.GELU, GeluAttrs("none")),
}
REGISTER_EPILOGUES = [e for e in EPILOGUES if e != "residual+gelu"]


def check(x_shape, m, k, stride=1, pads=(0, 0, 0, 0), dilation=1, epi="none", bias=True, threads=(1, 2, 3)):
    rng = np.random.default_rng(sum(x_shape) * 31 + m)
    kernel = k if isinstance(k, tuple) else (k, k)
    attrs = ConvAttrs(kernel, (stride, stride), pads, (dilation, dilation), 1, EPILOGUES[epi], "NHWC")
    g = nhwc_conv_graph(x_shape, m, attrs, bias, rng)
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    want = run_reference(g, feeds)["y"]
    results = []
    for t in threads:
        got = convc.compile(g, threads=t).run(feeds)["y"]
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-5, (t, err)
        results.append(got)
    for t, got in zip(threads[1:], results[1:]):  # the split never changes the order of the sums
        assert np.array_equal(got, results[0]), f"threads={t} differs from threads={threads[0]}"


@pytest.mark.parametrize("epi", REGISTER_EPILOGUES)
@pytest.mark.parametrize("x_shape,m,k,stride,pads,dilation", [
    ((2, 9, 11, 5), 7, 3, 1, (1, 1, 1, 1), 1),       # one partial panel, tiles spanning rows and images
    ((2, 9, 11, 5), 40, 3, 2, (1, 1, 1, 1), 1),      # a full and a partial panel, stride 2
    ((1, 13, 7, 3), 33, 5, 1, (2, 2, 2, 2), 2),      # dilation 2
    ((3, 8, 8, 16), 64, 1, 1, (0, 0, 0, 0), 1),      # 1x1: no padded copy
    ((1, 12, 12, 3), 16, 7, 2, (3, 3, 3, 3), 1),     # a stem conv
    ((1, 7, 6, 4), 9, (3, 2), 1, (1, 0, 0, 1), 1),   # asymmetric kernel and pads
])
def test_matches_reference(x_shape, m, k, stride, pads, dilation, epi):
    check(x_shape, m, k, stride, pads, dilation, epi)


@pytest.mark.parametrize("x_shape,m,k,stride,pads", [
    ((2, 9, 11, 5), 40, 3, 2, (1, 1, 1, 1)),    # a full and a partial panel, tiles spanning rows and images
    ((3, 8, 8, 16), 20, 1, 1, (0, 0, 0, 0)),    # 1x1, a partial panel
])
def test_tile_pass_activation_matches_reference(x_shape, m, k, stride, pads):
    """GELU runs over each finished tile's rows (TILE_PASS_ACTIVATIONS), after the residual, on every fringe."""
    check(x_shape, m, k, stride, pads, epi="residual+gelu", threads=(1, 2))


def test_narrow_tile_is_chosen_where_it_saves_lanes():
    """On AVX-512, 6, 24 and 40 output channels take the 8-float-vector tile, 16/32/144 the default; on AVX2,
    multiples of 24 that are not multiples of 16 take 4 rows x 24 columns (a 6 x 16 tile would end in a
    one-vector panel), the rest 6 x 16."""
    from convc.codegen.kernels.blas import AVX2, AVX512
    from convc.codegen.kernels.conv_nhwc_index import AVX2_24, NARROW_TILE, tile_isa
    channels = (6, 16, 24, 32, 40, 48, 64, 72, 96, 144)
    assert [c for c in channels if tile_isa(AVX512, c) == NARROW_TILE] == [6, 24, 40]
    assert [c for c in channels if tile_isa(AVX2, c) == AVX2_24] == [24, 72]
    assert {tile_isa(AVX2, c) for c in channels if c not in (24, 72)} == {AVX2}
    assert (AVX2_24.mr, AVX2_24.nr) == (4, 24)


@pytest.mark.parametrize("m", [6, 24, 56, 72])
def test_narrow_tile_channel_counts(m):
    """The narrow tiles of this host (AVX2: 24 and 72 channels in 4 x 24 tiles) on a padded 3x3 conv."""
    check((2, 7, 9, 12), m, 3, 1, (1, 1, 1, 1), epi="residual+leaky")


@pytest.mark.parametrize("x_shape,m", [((1, 7, 7, 40), 24), ((2, 9, 5, 16), 72)])
def test_24_column_tile_on_pointwise_convs(x_shape, m):
    """MobileNetV2's projections to 24 channels as 1x1 convs: tiles of 4 and 3 rows (25 pixels a thread on
    2 threads, 17 on 3), three panels of 24 columns, and every thread count giving the same bits."""
    from convc.codegen.kernels.conv_nhwc_index import AVX2_24, tile_rows
    assert [tile_rows(AVX2_24, p) for p in (25, 17, 90, 3136)] == [3, 3, 4, 4]
    check(x_shape, m, 1, 1, epi="residual+leaky")


@pytest.mark.parametrize("kw,c", [(1, 1), (1, 2), (3, 1), (1, 4), (1, 5), (2, 3), (3, 3)])
def test_every_remainder_of_the_unrolled_channel_loop(kw, c):
    """A kernel row is a run of kw*C k-steps, done UNROLL at a time and then singly: runs of 1 to 9."""
    check((1, 5, 6, c), 20, (2, kw), 1, (0, 1, 1, 0), epi="relu", threads=(1, 2))


def test_without_bias():
    check((1, 6, 6, 8), 20, 3, 1, (1, 1, 1, 1), bias=False, epi="relu")


def test_one_row_split_by_panels():
    """1 output row but 4 column panels: two threads split the panels instead of the rows."""
    check((1, 1, 6, 16), 128, 3, 1, (1, 1, 1, 1), epi="residual+leaky", threads=(1, 2))


@pytest.mark.parametrize("epi", ["none", "residual+gelu"])
def test_panels_larger_than_l2_block(epi):
    """K x NR panels of ~590 KB: one panel per L2 block, the pixel tiles loop inside (and a long activation
    runs over each block's columns of a tile)."""
    check((1, 4, 4, 512), 40, 3, 1, (1, 1, 1, 1), epi=epi, threads=(1, 2))


def test_weights_streamed_from_memory():
    """2.4 MB of packed weights against 18 KB of input: the first tile of each panel prefetches its
    weights, and two threads split the column panels (each reads half the weights)."""
    from convc.codegen.kernels.conv_nhwc import STREAMED_WEIGHT_BYTES
    assert 4608 * 128 * 4 > STREAMED_WEIGHT_BYTES
    check((1, 3, 3, 512), 128, 3, 1, (1, 1, 1, 1), epi="residual+leaky")


@pytest.mark.parametrize("x_shape,m,stride", [((2, 7, 9, 144), 24, 1), ((3, 9, 7, 40), 16, 2)])
def test_pointwise_input_prefetch_reaches_past_the_input(x_shape, m, stride):
    """A 1x1 conv's tiles prefetch the input A_PREFETCH_TILES tiles ahead (MobileNetV2's 144 -> 24
    projection, and a strided one): the last tiles' hints point past the input, which must not fault."""
    from convc.codegen.kernels.conv_nhwc import A_PREFETCH_TILES
    assert A_PREFETCH_TILES > 0
    check(x_shape, m, 1, stride, epi="residual+leaky", threads=(1, 2))


@pytest.mark.parametrize("x_shape,m,stride,epi", [((1, 7, 7, 40), 24, 1, "residual+leaky"),
                                                  ((3, 5, 5, 8), 20, 2, "residual+leaky"), ((1, 1, 7, 8), 16, 1, "tanh")])
def test_unpadded_conv_threads_split_register_tiles(x_shape, m, stride, epi):
    """Without padding, threads split the register tiles, not the output rows: a 7x7 map at batch 1 is
    25 + 24 pixels on 2 threads (5-row tiles), 3 threads end mid-row, strided tiles span images, and
    7 pixels in two 4-row tiles leave the third of 3 threads none (nor rows for Tanh's pass after the tiles)."""
    from convc.codegen.kernels.blas import AVX2
    from convc.codegen.kernels.conv_nhwc_index import pixels_per_thread, tile_rows
    assert [pixels_per_thread(1, 7, 7, t, padded=False) for t in (1, 2, 3)] == [49, 25, 17]
    assert pixels_per_thread(1, 7, 7, 2, padded=True) == 28  # 4 of the 7 rows: the padded copy is by rows
    assert tile_rows(AVX2, 25) == 5
    check(x_shape, m, 1, stride, epi=epi)


def test_streamed_output(monkeypatch):
    """Large outputs with rows of whole cache lines are stored past the caches (non-temporal stores)
    when Y is aligned: here every such output streams (STREAM_MIN_BYTES 0). The 1x1 conv's output is in
    the arena (aligned: streamed, as the IR shows) and the 3x3 conv reading it writes the caller's array
    (streamed only when aligned); a residual, 1 to 3 threads (3 split 10 rows unevenly), 48 channels
    (whole panels), and 40 (rows of 160 bytes, partial lines: never streamed)."""
    from convc.codegen.kernels import conv_nhwc
    from convc.codegen.module import emit_module
    from convc.passes.pipeline import pipeline
    monkeypatch.setattr(conv_nhwc, "STREAM_MIN_BYTES", 0)
    check((2, 5, 7, 16), 48, 1, epi="residual+leaky")
    check((1, 6, 9, 8), 40, 3, pads=(1, 1, 1, 1), epi="relu")
    rng = np.random.default_rng(5)
    g = Graph("expand_then_3x3")
    g.add_tensor("x", (2, 5, 7, 16), np.float32, TensorKind.INPUT)
    for name, src, dst, (cin, m, k) in (("expand", "x", "h", (16, 32, 1)), ("conv", "h", "y", (32, 16, 3))):
        g.add_constant(f"w_{name}", rng.standard_normal((m, cin, k, k)).astype(np.float32))
        attrs = ConvAttrs((k, k), (1, 1), (k // 2,) * 4, (1, 1), 1, EPILOGUES["relu"], "NHWC")
        g.add_op(OpKind.CONV, attrs, [src, f"w_{name}"], [dst], name=name)
    g.outputs = ["y"]
    assert "!nontemporal" in str(emit_module(pipeline(g)).ir_module)
    feeds = {"x": rng.standard_normal((2, 5, 7, 16)).astype(np.float32)}
    want = run_reference(g, feeds)["y"]
    for threads in (1, 2):
        got = convc.compile(g, threads=threads).run(feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

@pytest.mark.slow
def test_tile_rows_pad_the_fewest_pixels():
    from convc.codegen.kernels.blas import AVX2, AVX512
    from convc.codegen.kernels.conv_nhwc_index import NARROW_TILE, tile_rows
    # AVX-512: 7x7 = 49 pixels in 7 tiles of 7; 784 and 3136 in tiles of 12 (1% and 0.3% padding);
    # 196 in tiles of 8 (2%, where 12 rows pad 4%). Tiles of 8-float vectors never take 12 rows.
    assert [tile_rows(AVX512, p) for p in (49, 196, 784, 3136, 9)] == [7, 8, 12, 12, 12]
    assert [tile_rows(NARROW_TILE, p) for p in (49, 784)] == [7, 8]
    assert [tile_rows(AVX2, p) for p in (49, 784)] == [5, 6]
    check((1, 7, 7, 16), 32, 3, 1, (1, 1, 1, 1), epi="relu")  # 49 pixels: 7-row tiles
    check((3, 8, 8, 16), 40, 3, 1, (1, 1, 1, 1), epi="residual+leaky")  # 192 pixels: 12-row tiles


def test_unsupported_channels_last_conv_is_a_compile_error_naming_the_node():
    """A hand-built channels-last grouped conv that is not depthwise (the layout pass never makes one)
    fails clearly, not in LLVM."""
    g = Graph("grouped_nhwc")
    g.add_tensor("x", (1, 5, 5, 4), np.float32, TensorKind.INPUT)
    g.add_constant("w", np.ones((4, 2, 3, 3), np.float32))
    g.add_op(OpKind.CONV, ConvAttrs((3, 3), (1, 1), (0,) * 4, (1, 1), 2, layout="NHWC"), ["x", "w"], ["y"], name="cg")
    g.outputs = ["y"]
    with pytest.raises(convc.CompileError, match=r"node 'cg' \(Conv\).*needs a 2-D kernel, one group"):
        convc.compile(g)


def test_channels_last_1d_conv_runs_as_2d():
    """A hand-built channels-last 1-D conv runs the 2-D implicit GEMM over (N, 1, L, C) (passes/conv1d.py)."""
    rng = np.random.default_rng(3)
    g = Graph("conv1d_nhwc")
    g.add_tensor("x", (4, 37, 12), np.float32, TensorKind.INPUT)
    g.add_constant("w", rng.standard_normal((8, 12, 3)).astype(np.float32))
    g.add_op(OpKind.CONV, ConvAttrs((3,), (2,), (1, 2), (2,), 1, layout="NHWC"), ["x", "w"], ["y"], name="c1d")
    g.outputs = ["y"]
    compiled = convc.compile(g)
    assert compiled.graph.op("c1d").attrs.algorithm is ConvAlgorithm.IMPLICIT_GEMM_NHWC
    x = rng.standard_normal((4, 37, 12)).astype(np.float32)
    want = run_reference(g, {"x": x})["y"]
    assert np.abs(compiled.run({"x": x})["y"] - want).max() / np.abs(want).max() < 1e-5


def test_pass_converts_and_matches_channels_first():
    """An ONNX-layout conv chain compiled through the layout pass equals the channels-first kernels."""
    from convc import models
    model = models.cifar_cnn(batch=3)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    compiled = convc.compile(model, threads=2)
    assert any(op.attrs.channels_last for op in compiled.graph.ops() if op.kind is OpKind.CONV)
    from convc.compiler import load_graph
    want = run_reference(load_graph(model, 3), {"input": x})["output"]
    got = compiled.run({"input": x})["output"]
    assert np.abs(got - want).max() / max(1.0, np.abs(want).max()) < 1e-5


# outputs of at most PAD_OUTPUT_PIXELS pixels whose width leaves a partial last panel (squeeze-and-excitation
# reductions on a 1x1 map) are computed whole panels wide into scratch and copied: at batch 1 and 16, widths
# below one panel and past it, with and without bias, every epilogue (tanh and a residual keep the usual
# path), 64 pixels (the limit) and 81 (past it)
@pytest.mark.parametrize("x_shape,m", [((1, 1, 1, 96), 4), ((16, 1, 1, 240), 10), ((1, 1, 1, 672), 28),
                                       ((2, 3, 5, 37), 6), ((1, 8, 8, 16), 7), ((1, 9, 9, 16), 7)])
@pytest.mark.parametrize("epi", ["none", "relu", "tanh", "residual+leaky"])
def test_tiny_outputs_of_a_partial_panel(x_shape, m, epi):
    check(x_shape, m, 1, epi=epi)
    check(x_shape, m, 1, epi=epi, bias=False, threads=(2,))


def test_tiny_reductions_of_every_width_share_one_kernel():
    """EfficientNet-B0's squeeze convs (96 -> 4, 144 -> 6, 240 -> 10, 672 -> 28, SiLU, a 1x1 map) were a
    register tile and a module of 50-90 kchars each; computed whole panels wide, they are one kernel
    module with the micro-kernels of whole panels."""
    from convc.codegen.module import emit_module
    from convc.codegen.split import split_module
    from convc.ops.elementwise import SwishAttrs
    from convc.passes.pipeline import pipeline
    rng = np.random.default_rng(5)
    g = Graph("squeezes")
    epi = Epilogue(False, OpKind.SWISH, SwishAttrs())
    widths = [(96, 4), (144, 6), (240, 10), (672, 28)]
    for i, (c, m) in enumerate(widths):
        g.add_tensor(f"x{i}", (1, 1, 1, c), np.float32, TensorKind.INPUT)
        g.add_constant(f"w{i}", (rng.standard_normal((m, c, 1, 1)) / np.sqrt(c)).astype(np.float32))
        g.add_constant(f"b{i}", rng.standard_normal(m).astype(np.float32))
        g.add_op(OpKind.CONV, ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, epi, "NHWC"),
                 [f"x{i}", f"w{i}", f"b{i}"], [f"y{i}"], name=f"squeeze{i}")
    g.inputs, g.outputs = [f"x{i}" for i in range(4)], [f"y{i}" for i in range(4)]
    native = emit_module(pipeline(g), threads=2)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == 4 and len(kernels) == 1, [len(m.text) for m in kernels]
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    want = run_reference(g, feeds)
    for threads in (1, 2):
        got = convc.compile(g, threads=threads, cache=False).run(feeds)
        for name in g.outputs:
            assert np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max()) < 1e-5, (threads, name)
