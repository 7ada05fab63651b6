"""The channels-last (NHWC) MaxPool / AveragePool and depthwise conv kernels against the numpy reference,
each compiled for one thread and for two (output rows split between them). The ops are built channels
last directly, as the layout pass leaves them."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.errors import GraphError
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.elementwise import ClipAttrs, LeakyReluAttrs, SwishAttrs
from convc.ops.epilogue import Epilogue
from convc.ops.layout import CHANNELS_LAST
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs
from convc.reference import run_reference


@pytest.fixture(autouse=True)
def split_every_kernel(monkeypatch):
    """These small ops would run on one thread (too little work to wake another): split them anyway."""
    import convc.codegen.module
    monkeypatch.setattr(convc.codegen.module, "PARALLEL_MIN_WORK", 0)


def check(g: Graph, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    want = run_reference(g, feeds)["y"]
    for threads in (1, 2):
        got = convc.compile(g, threads=threads).run(feeds)["y"]
        assert got.shape == want.shape
        scale = max(1.0, float(np.abs(want[np.isfinite(want)]).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=f"threads={threads}")


# --- pooling -------------------------------------------------------------------------------------
# (kernel, strides, pads (top, left, bottom, right), dilations, ceil_mode, channels, input H x W)
POOLS = {
    "k1": ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, 5, (6, 7)),
    "k2s2": ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, 16, (8, 9)),
    "k3s2p1": ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, 64, (9, 12)),
    "k3s1p1-ceil": ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True, 37, (7, 21)),
    "k3s3-asym-ceil": ((3, 3), (3, 3), (0, 1, 1, 0), (1, 1), True, 5, (8, 9)),
    "k2x3s1x2-asym": ((2, 3), (1, 2), (0, 1, 1, 0), (1, 1), True, 16, (8, 9)),
    "k5s2p2": ((5, 5), (2, 2), (2, 2, 2, 2), (1, 1), False, 1, (11, 10)),
    "k5s3-asym-ceil": ((5, 5), (3, 3), (2, 1, 0, 2), (1, 1), True, 64, (12, 13)),
    "k3d2-ceil": ((3, 3), (2, 2), (1, 2, 2, 1), (2, 2), True, 37, (10, 11)),
    "k9-taps-in-loops": ((9, 9), (1, 2), (4, 4, 4, 3), (1, 1), False, 5, (12, 13)),  # 81 taps > MAX_UNROLLED_TAPS
}
POOL_KINDS = {"max": (OpKind.MAX_POOL, False), "avg": (OpKind.AVERAGE_POOL, False),
              "avg-include-pad": (OpKind.AVERAGE_POOL, True)}


def run_pool(kind: OpKind, attrs: PoolAttrs, x_shape: tuple[int, ...], seed: int = 0) -> None:
    g = Graph("pool")
    g.add_tensor("x", x_shape, np.float32, TensorKind.INPUT)
    g.add_op(kind, attrs, ["x"], ["y"])
    g.outputs = ["y"]
    check(g, {"x": np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)})


@pytest.mark.parametrize("kind", list(POOL_KINDS))
@pytest.mark.parametrize("case", list(POOLS))
def test_pool(case, kind):
    kernel, strides, pads, dilations, ceil_mode, c, hw = POOLS[case]
    op, include_pad = POOL_KINDS[kind]
    attrs = PoolAttrs(kernel, strides, pads, dilations, ceil_mode, include_pad, CHANNELS_LAST)
    run_pool(op, attrs, (2,) + hw + (c,))


@pytest.mark.parametrize("kind", [OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL])
@pytest.mark.parametrize("c", [5, 64, 100])
def test_global_pool(kind, c):
    """Channel blocks of 4 vectors, a partial block and a masked tail, over 2 images of 7 x 6 pixels."""
    run_pool(kind, GlobalPoolAttrs(CHANNELS_LAST), (2, 7, 6, c))


def test_global_pool_needs_its_attributes():
    """NoAttrs (what global pools took before they had a layout) is refused by name, not a crash."""
    g = Graph("gap")
    g.add_tensor("x", (2, 3, 4, 5), np.float32, TensorKind.INPUT)
    with pytest.raises(GraphError, match=r"node 'gap' \(GlobalAveragePool\): attributes must be GlobalPoolAttrs"):
        g.add_op(OpKind.GLOBAL_AVERAGE_POOL, NoAttrs(), ["x"], name="gap")


def test_pool_1d():
    run_pool(OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,), True, False, CHANNELS_LAST), (2, 10, 37))


def test_max_pool_nan_and_inf_propagate():
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 20)).astype(np.float32)
    x[0, 2, 3, 4], x[0, 0, 0, 17], x[0, 5, 5, 19] = np.nan, np.inf, -np.inf
    g = Graph("pool")
    g.add_tensor("x", x.shape, np.float32, TensorKind.INPUT)
    attrs = PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, False, CHANNELS_LAST)
    g.add_op(OpKind.MAX_POOL, attrs, ["x"], ["y"])
    g.outputs = ["y"]
    check(g, {"x": x})


# --- depthwise convolution -------------------------------------------------------------------------
EPILOGUES = {
    "none": Epilogue(),
    "relu": Epilogue(False, OpKind.RELU),
    "relu6": Epilogue(False, OpKind.CLIP, ClipAttrs(0.0, 6.0)),
    "residual+leaky": Epilogue(True, OpKind.LEAKY_RELU, LeakyReluAttrs(0.1)),
    "tanh": Epilogue(False, OpKind.TANH),  # no vector form: a pass over each finished row
    "hardswish": Epilogue(False, OpKind.HARD_SWISH),
    "swish": Epilogue(False, OpKind.SWISH, SwishAttrs()),  # EfficientNet's SiLU
}

# (kernel, stride, pads (top, left, bottom, right), dilation, bias, epilogue, channels, input H x W)
DEPTHWISE = {
    "k3s1p1": (3, 1, (1, 1, 1, 1), 1, True, "none", 16, (14, 13)),
    "k3s1p1-relu6-c96": (3, 1, (1, 1, 1, 1), 1, True, "relu6", 96, (12, 29)),
    "k3s2p1-relu": (3, 2, (1, 1, 1, 1), 1, False, "relu", 37, (13, 21)),
    "k3s2-tf-same": (3, 2, (0, 0, 1, 1), 1, True, "relu6", 96, (14, 14)),  # TF 'SAME' at stride 2 pads after
    "k3s2p0": (3, 2, (0, 0, 0, 0), 1, True, "none", 96, (9, 20)),
    "k3s1p2d2-relu": (3, 1, (2, 2, 2, 2), 2, True, "relu", 16, (13, 11)),
    "k3s1p1-residual": (3, 1, (1, 1, 1, 1), 1, True, "residual+leaky", 37, (10, 19)),
    "k5s1p2-residual": (5, 1, (2, 2, 2, 2), 1, False, "residual+leaky", 16, (13, 11)),
    "k5s2p2-tanh": (5, 2, (2, 2, 2, 2), 1, True, "tanh", 3, (13, 11)),
    "k5s1p0d2": (5, 1, (0, 0, 0, 0), 2, True, "hardswish", 37, (15, 20)),
    "k7s2p3": (7, 2, (3, 3, 3, 3), 1, True, "relu6", 16, (15, 13)),
    "k7s1p2-narrow": (7, 1, (2, 2, 2, 2), 1, False, "tanh", 3, (9, 5)),  # every column is an edge column
}


def run_depthwise(x_shape, attrs: ConvAttrs, bias: bool, constant_weights: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    c = x_shape[-1]
    g = Graph("depthwise")
    g.add_tensor("x", x_shape, np.float32, TensorKind.INPUT)
    w = rng.standard_normal((c, 1) + attrs.kernel_shape).astype(np.float32)
    if constant_weights:
        g.add_constant("w", w)
    else:
        g.add_tensor("w", w.shape, np.float32, TensorKind.INPUT)
    inputs = ["x", "w"]
    if bias:
        inputs.append(g.add_constant("b", rng.standard_normal(c).astype(np.float32)).name)
    if attrs.epilogue.residual:
        plain = ConvAttrs(attrs.kernel_shape, attrs.strides, attrs.pads, attrs.dilations, attrs.group,
                          layout=CHANNELS_LAST)
        g.add_op(OpKind.CONV, plain, inputs[:2], ["probe"])
        shape = g.tensor("probe").shape
        g.remove_op(g.op(g.producer("probe").name))
        g.add_tensor("r", shape, np.float32, TensorKind.INPUT)
        inputs.append("r")
    g.add_op(OpKind.CONV, attrs, inputs, ["y"])
    g.outputs = ["y"]
    feeds = {name: rng.standard_normal(g.tensor(name).shape).astype(np.float32) for name in g.inputs}
    if not constant_weights:
        feeds["w"] = w
    check(g, feeds, tol=2e-5)


def depthwise_attrs(k, stride, pads, dilation, c, epi: str, rank: int = 2) -> ConvAttrs:
    return ConvAttrs((k,) * rank, (stride,) * rank, pads, (dilation,) * rank, c, EPILOGUES[epi], CHANNELS_LAST)


@pytest.mark.parametrize("case", list(DEPTHWISE))
def test_depthwise(case):
    k, stride, pads, dilation, bias, epi, c, hw = DEPTHWISE[case]
    run_depthwise((2,) + hw + (c,), depthwise_attrs(k, stride, pads, dilation, c, epi), bias)


def depthwise_graph(layers, seed: int = 0) -> Graph:
    """Depthwise convs side by side, x_i [N, H, W, C] -> y_i, with a bias; ``layers`` lists
    (x shape, kernel, stride, epilogue name), the pads kernel // 2 on every side."""
    rng = np.random.default_rng(seed)
    g = Graph("depthwise_layers")
    for i, (x_shape, k, stride, epi) in enumerate(layers):
        c = x_shape[-1]
        g.add_tensor(f"x{i}", x_shape, np.float32, TensorKind.INPUT)
        g.add_constant(f"w{i}", rng.standard_normal((c, 1, k, k)).astype(np.float32))
        g.add_constant(f"b{i}", rng.standard_normal(c).astype(np.float32))
        inputs = [f"x{i}", f"w{i}", f"b{i}"]
        if EPILOGUES[epi].residual:
            n, h, w, _ = x_shape
            out = (n, (h - 1) // stride + 1, (w - 1) // stride + 1, c)
            g.add_tensor(f"r{i}", out, np.float32, TensorKind.INPUT)
            inputs.append(f"r{i}")
        g.add_op(OpKind.CONV, depthwise_attrs(k, stride, (k // 2,) * 4, 1, c, epi), inputs, [f"y{i}"], name=f"dw{i}")
    g.inputs = [n for n in (f"{t}{i}" for i in range(len(layers)) for t in "xr") if g.has_tensor(n)]
    g.outputs = [f"y{i}" for i in range(len(layers))]
    return g


def depthwise_reference(g: Graph, feeds: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Layer i of ``depthwise_graph`` in numpy, tap by tap in float64."""
    a = g.op(f"dw{i}").attrs
    (k, _), (s, _), p = a.kernel_shape, a.strides, a.pads[0]
    x = np.pad(feeds[f"x{i}"].astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    w, bias = g.tensor(f"w{i}").data.astype(np.float64), g.tensor(f"b{i}").data
    oh, ow = g.tensor(f"y{i}").shape[1:3]
    y = np.broadcast_to(bias.astype(np.float64), (x.shape[0], oh, ow, x.shape[3])).copy()
    for kh in range(k):
        for kw in range(k):
            y += x[:, kh:kh + s * (oh - 1) + 1:s, kw:kw + s * (ow - 1) + 1:s] * w[:, 0, kh, kw]
    return a.epilogue.reference(y.astype(np.float32), feeds.get(f"r{i}"))


def check_layers(layers, threads_list=(1, 2), seed: int = 0) -> None:
    g = depthwise_graph(layers, seed)
    rng = np.random.default_rng(seed + 1)
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    want = [depthwise_reference(g, feeds, i) for i in range(len(layers))]
    for threads in threads_list:
        got = convc.compile(g, threads=threads, cache=False).run(feeds)
        for i, layer in enumerate(layers):
            y = got[f"y{i}"]
            assert y.shape == want[i].shape and y.dtype == np.float32, (layer, y.shape)
            err = np.abs(y - want[i]).max() / max(1.0, float(np.abs(want[i]).max()))
            assert err < 2e-5, (layer, threads, err)


# MobileNetV2's and EfficientNet-B0's windows at the sizes they run: batch 16 at 112 x 112 (an output of
# 25 MB: streamed past the caches), batch 1 down to 7 x 7, odd widths whose interiors leave 0-3 pixels
# after the 4-pixel blocks, 37 channels (a masked vector).
NETWORK_LAYERS = [
    ((16, 112, 112, 32), 3, 1, "swish"),
    ((1, 7, 7, 1152), 3, 1, "swish"),
    ((1, 13, 29, 40), 3, 1, "swish"),
    ((2, 112, 112, 96), 3, 2, "relu6"),
    ((1, 28, 31, 240), 3, 2, "relu6"),
    ((1, 57, 61, 37), 5, 2, "swish"),
    ((1, 14, 14, 672), 5, 2, "swish"),
    ((2, 28, 28, 240), 5, 1, "residual+leaky"),
    ((1, 7, 7, 1152), 5, 1, "residual+leaky"),
    ((1, 9, 30, 48), 5, 1, "residual+leaky"),
]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_at_network_sizes(threads):
    check_layers(NETWORK_LAYERS, (threads,), seed=threads)


@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_depthwise_every_epilogue_at_odd_sizes(epi):
    """Each epilogue on 3x3 and 5x5 windows at strides 1 and 2, odd widths and channel counts."""
    check_layers([((2, 15, 33, 37), 3, 1, epi), ((1, 17, 35, 16), 3, 2, epi), ((2, 11, 23, 24), 5, 1, epi),
                  ((1, 19, 21, 13), 5, 2, epi)])


def test_depthwise_kernels_compile_for_avx512():
    """Emitted for znver4 (16 lanes; compiled, not run: no AVX-512 here): the code uses zmm."""
    import llvmlite.binding as llvm

    from convc.codegen.jit import Target
    from convc.codegen.module import ModuleEmitter
    from convc.passes.pipeline import pipeline
    host = Target.host()
    cpu, feats = "znver4", "+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq"
    target = Target(host.triple, cpu, feats)
    g = depthwise_graph([((1, 13, 29, 48), 3, 1, "swish"), ((2, 14, 14, 64), 3, 1, "swish"),
                         ((1, 19, 21, 13), 5, 2, "relu6")])
    native = ModuleEmitter(pipeline(g), target=target).emit()
    assert len(native.kernel_names) == 3
    text = str(native.ir_module)
    assert "<16 x float>" in text
    module = llvm.parse_assembly(text)
    tm = llvm.Target.from_triple(target.triple).create_target_machine(cpu=cpu, features=feats, opt=3)
    assert "zmm" in tm.emit_assembly(module)


def test_depthwise_weights_fed_at_run_time():
    run_depthwise((2, 9, 17, 37), depthwise_attrs(3, 1, (1, 1, 1, 1), 1, 37, "relu"), bias=True,
                  constant_weights=False)


def test_depthwise_1d():
    run_depthwise((2, 21, 16), depthwise_attrs(3, 1, (2, 0), 2, 16, "relu", rank=1), bias=True)


def test_depthwise_streamed_output(monkeypatch):
    """Large outputs are stored past the caches (non-temporal stores) when Y is aligned: here every
    output streams (STREAM_MIN_BYTES 0). A chain of two depthwise convs puts the first's output in the
    arena (aligned: streamed, as the IR shows); the second's is the caller's array, which takes the
    cached path when it is not aligned. Channels a whole number of vectors with residual and ReLU6, and
    37 channels (masked stores: never streamed)."""
    from convc.codegen.kernels import depthwise_nhwc
    from convc.codegen.module import emit_module
    from convc.passes.pipeline import pipeline
    monkeypatch.setattr(depthwise_nhwc, "STREAM_MIN_BYTES", 0)
    run_depthwise((2, 11, 19, 32), depthwise_attrs(3, 1, (1, 1, 1, 1), 1, 32, "residual+leaky"), bias=True)
    run_depthwise((2, 9, 17, 37), depthwise_attrs(3, 2, (1, 1, 1, 1), 1, 37, "relu6"), bias=True)
    rng = np.random.default_rng(3)
    g = Graph("two_depthwise")
    g.add_tensor("x", (2, 13, 15, 48), np.float32, TensorKind.INPUT)
    for i, (src, dst) in enumerate((("x", "h"), ("h", "y"))):
        g.add_constant(f"w{i}", rng.standard_normal((48, 1, 3, 3)).astype(np.float32))
        g.add_op(OpKind.CONV, depthwise_attrs(3, 1 + i, (1, 1, 1, 1), 1, 48, "relu6"), [src, f"w{i}"], [dst])
    g.outputs = ["y"]
    assert "!nontemporal" in str(emit_module(pipeline(g)).ir_module)
    check(g, {"x": rng.standard_normal((2, 13, 15, 48)).astype(np.float32)}, tol=2e-5)



def test_streamed_outputs_end_to_end(monkeypatch):
    """A MobileNet-style net (tests/test_real_nets.py) with every depthwise and implicit-GEMM output that
    can stream streamed (STREAM_MIN_BYTES 0), at batch 3 on 1 and 2 threads, against onnxruntime."""
    from helpers import max_rel_error
    from test_real_nets import TOLERANCE, depthwise_separable_net, onnxruntime_outputs

    from convc.codegen.kernels import conv_nhwc, depthwise_nhwc
    monkeypatch.setattr(depthwise_nhwc, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(conv_nhwc, "STREAM_MIN_BYTES", 0)
    model = depthwise_separable_net()
    x = np.random.default_rng(7).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (want,) = onnxruntime_outputs(model, {"image": x})
    for threads in (1, 2):
        (got,) = convc.compile(model, batch=3, threads=threads, cache=False).run({"image": x}).values()
        assert max_rel_error(got, want) < TOLERANCE, threads

def test_pack_weights_layout():
    from convc.codegen.kernels.depthwise_nhwc import pack_weights
    w = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 1, 3, 2)
    packed = pack_weights(w, 3, 2, 4)
    assert packed.shape == (3, 2, 8)
    np.testing.assert_array_equal(packed[:, :, :5], w[:, 0].transpose(1, 2, 0))
    assert not packed[:, :, 5:].any()


def test_column_runs_group_edges_and_interior():
    from convc.codegen.kernels.pool_nhwc import Run, Window, column_runs
    # 3 taps, stride 1, one column of padding each side, 8 columns: edge, interior, edge
    g = Window(1, 8, 8, 4, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    assert column_runs(g) == [Run(0, 1, 1, 3, 2), Run(1, 7, 0, 3, 3), Run(7, 8, 0, 2, 2)]
    assert [r.count for r in column_runs(g, include_pad=True)] == [3, 3, 3]


@pytest.mark.parametrize("isa", ["avx2", "sse"])
def test_narrower_vectors(monkeypatch, isa):
    """The kernels as emitted for AVX2 (8 floats a vector, 4 pixels a block) and SSE (4 floats): the
    host runs both."""
    from convc.codegen.kernels import blas
    monkeypatch.setattr(blas, "host_isa", lambda features: {"avx2": blas.AVX2, "sse": blas.PORTABLE}[isa])
    run_depthwise((2, 11, 19, 37), depthwise_attrs(3, 1, (1, 1, 1, 1), 1, 37, "residual+leaky"), bias=True)
    run_depthwise((1, 12, 13, 6), depthwise_attrs(5, 2, (2, 2, 2, 2), 1, 6, "relu6"), bias=False)
    run_pool(OpKind.AVERAGE_POOL, PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True, False, CHANNELS_LAST),
             (2, 9, 10, 37))
