"""Kernels whose sizes are run-time arguments (ModuleEmitter.size_table): the layers of one
elementwise op, or the unpadded channels-last convs, at different shapes are one function, compiled once per model (codegen/split.py)
and once for every model (the kernel cache), and compute the same bits as numpy at odd sizes,
on 1 and 2 threads."""
from __future__ import annotations

import re

import numpy as np
import pytest

import convc
from convc.codegen import kernel_cache, llvm_worker
from convc.codegen.module import emit_module
from convc.codegen.split import split_module
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def
from convc.ops.conv import ConvAlgorithm, ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.ops.optim import AdamAttrs
from convc.options import CompileOptions
from convc.passes.pipeline import pipeline
from convc.reference import run_reference

# per layer: (op, operand shapes); the two shapes of each op differ in every size (odd ones leave
# vector remainders), the broadcasts are per-channel scales like a BatchNorm's and a bias row
LAYERS = [
    (OpKind.RELU, [(16, 7, 29, 31)]),
    (OpKind.RELU, [(3, 5, 9)]),
    (OpKind.SIGMOID, [(16, 3, 33, 17)]),
    (OpKind.SIGMOID, [(2, 1, 1, 5)]),
    (OpKind.MUL, [(16, 40, 29, 31), (40, 1, 1)]),
    (OpKind.MUL, [(2, 24, 7, 9), (24, 1, 1)]),
    (OpKind.ADD, [(16, 9, 37), (37,)]),
    (OpKind.ADD, [(5, 3, 13), (13,)]),
]


def layers_graph(layers=LAYERS) -> Graph:
    g = Graph("layers")
    for i, (kind, shapes) in enumerate(layers):
        names = []
        for j, s in enumerate(shapes):
            names.append(f"x{i}_{j}")
            g.add_tensor(names[-1], s, np.float32, TensorKind.INPUT)
        g.add_op(kind, NoAttrs(), names, [f"y{i}"])
    g.inputs = [f"x{i}_{j}" for i, (_, shapes) in enumerate(layers) for j in range(len(shapes))]
    g.outputs = [f"y{i}" for i in range(len(layers))]
    return g


def feeds(layers=LAYERS, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (_, shapes) in enumerate(layers):
        for j, s in enumerate(shapes):
            out[f"x{i}_{j}"] = rng.standard_normal(s).astype(np.float32) * 4
    return out


def test_layers_of_one_op_at_different_shapes_are_one_kernel_module():
    plan = pipeline(layers_graph(), options=CompileOptions(threads=2))
    native = emit_module(plan, threads=2)
    assert len(native.callees) == len(LAYERS)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(kernels) == len(LAYERS) // 2, [m.text[:200] for m in kernels]  # one per op kind
    # the sizes are not in the code: no shape of any layer appears as a constant in a kernel
    for m in kernels:
        for size in ("29", "31", "33", "37", "40"):
            assert f" {size}\n" not in m.text and f" {size}," not in m.text


@pytest.mark.parametrize("threads", [1, 2])
def test_shared_kernels_compute_numpys_bits(threads):
    x = feeds(seed=threads)
    for v in x.values():  # specials give numpy's results (NaN stays NaN, -0.0 keeps its sign)
        v.flat[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    got = convc.compile(layers_graph(), threads=threads, cache=False).run(x)
    for i, (kind, shapes) in enumerate(LAYERS):
        a = [x[f"x{i}_{j}"] for j in range(len(shapes))]
        with np.errstate(all="ignore"):
            if kind is OpKind.RELU:
                want = np.where(a[0] < 0, np.float32(0), a[0])
            elif kind is OpKind.MUL:
                want = a[0] * a[1]
            elif kind is OpKind.ADD:
                want = a[0] + a[1]
            else:
                want = None
        y = got[f"y{i}"]
        assert y.shape == np.broadcast_shapes(*shapes)
        if want is None:  # Sigmoid: vecmath's polynomial, not numpy's exp; within 2 ulp of float64's
            ref = (1 / (1 + np.exp(-a[0].astype(np.float64)))).astype(np.float32)
            ok = np.isfinite(ref)
            np.testing.assert_array_max_ulp(y[ok], ref[ok], 4)
            continue
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32), err_msg=f"{kind.value} {shapes}")


def test_a_model_with_new_shapes_reuses_the_cached_elementwise_kernels(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "1")
    compiled = []
    real = llvm_worker.object_code
    monkeypatch.setattr(llvm_worker, "object_code", lambda text, *a: compiled.append(text) or real(text, *a))
    first = [(OpKind.RELU, [(16, 7, 29, 31)]), (OpKind.MUL, [(16, 40, 29, 31), (40, 1, 1)])]
    convc.compile(layers_graph(first), threads=2)
    stored = len(kernel_cache.files(tmp_path / "cache"))
    assert stored >= 2
    compiled.clear()
    second = [(OpKind.RELU, [(8, 3, 11, 13)]), (OpKind.MUL, [(8, 56, 11, 13), (56, 1, 1)])]
    model = convc.compile(layers_graph(second), threads=2)
    assert len(compiled) == 1, "only the entry point compiles: the kernels come from the cache"
    assert len(kernel_cache.files(tmp_path / "cache")) == stored
    x = feeds(second)
    got = model.run(x)
    np.testing.assert_array_equal(got["y0"], np.where(x["x0_0"] < 0, np.float32(0), x["x0_0"]))
    np.testing.assert_array_equal(got["y1"], x["x1_0"] * x["x1_1"])


# channels-last convs without padding (the implicit GEMM's run-time-sized form): odd sizes, a
# partial column panel, stride 2, a 3x3 window, tiles spanning rows and images
UNPADDED_CONVS = [((2, 9, 11, 5), 7, 1, 1), ((3, 8, 8, 16), 64, 1, 1), ((2, 13, 11, 24), 40, 1, 2),
                  ((2, 9, 11, 5), 40, 3, 1), ((1, 15, 13, 33), 16, 3, 2)]


def conv_graph(convs, seed=0, epilogue=Epilogue(), input_scale=False) -> Graph:
    """Channels-last convs x_i [N, H, W, C] -> y_i [N, OH, OW, m], side by side in one graph;
    ``input_scale``: each conv's X is scaled per (image, channel) by an input s_i [N, 1, 1, C]
    (a squeeze-and-excitation Mul fused into the conv)."""
    rng = np.random.default_rng(seed)
    g = Graph("convs")
    for i, (x_shape, m, k, stride) in enumerate(convs):
        g.add_tensor(f"x{i}", x_shape, np.float32, TensorKind.INPUT)
        g.add_constant(f"w{i}", rng.standard_normal((m, x_shape[3], k, k)).astype(np.float32))
        g.add_constant(f"b{i}", rng.standard_normal(m).astype(np.float32))
        attrs = ConvAttrs((k, k), (stride, stride), (0, 0, 0, 0), (1, 1), 1, epilogue, "NHWC",
                          input_scale=input_scale)
        scale = []
        if input_scale:
            g.add_tensor(f"s{i}", (x_shape[0], 1, 1, x_shape[3]), np.float32, TensorKind.INPUT)
            scale = [f"s{i}"]
        g.add_op(OpKind.CONV, attrs, [f"x{i}", f"w{i}", f"b{i}"] + scale, [f"y{i}"], name=f"conv{i}")
    g.inputs = [f"x{i}" for i in range(len(convs))] + [f"s{i}" for i in range(len(convs)) if input_scale]
    g.outputs = [f"y{i}" for i in range(len(convs))]
    return g


def test_unpadded_convs_of_different_sizes_are_one_kernel_module():
    """DenseNet's 1x1 convs on its growing Concats: C, the image size and the batch differ."""
    convs = [((1, 28, 28, 96), 128, 1, 1), ((2, 28, 28, 160), 128, 1, 1), ((1, 28, 28, 488), 128, 1, 1)]
    native = emit_module(pipeline(conv_graph(convs), options=CompileOptions(threads=2)), threads=2)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == 3 and len(kernels) == 1


@pytest.mark.parametrize("input_scale", [False, True])
def test_unpadded_convs_with_different_channels_are_one_kernel_module(input_scale):
    """EfficientNet-B0's 14x14 expand and SE-scaled projection convs: C and M differ (Y's rows, M floats
    apart, and the per-thread copy of the scaled weights are run-time sizes too)."""
    convs = [((1, 14, 14, 80), 480, 1, 1), ((1, 14, 14, 112), 672, 1, 1), ((2, 14, 14, 480), 112, 1, 1)]
    native = emit_module(pipeline(conv_graph(convs, input_scale=input_scale), options=CompileOptions(threads=2)),
                         threads=2)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == 3 and len(kernels) == 1


# SE-scaled convs: odd channels, tiles straddling images, two images per thread, a partial panel
SCALED_CONVS = [((3, 5, 7, 13), 7, 1, 1), ((2, 9, 11, 24), 40, 1, 1), ((4, 3, 3, 33), 20, 1, 1)]


@pytest.mark.parametrize("threads", [1, 2])
def test_scaled_convs_match_the_reference(threads):
    g = conv_graph(SCALED_CONVS, seed=threads, input_scale=True)
    rng = np.random.default_rng(threads)
    x = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    model = convc.compile(g, threads=threads, cache=False)
    got, want = model.run(x), run_reference(g, x)
    for name in g.outputs:
        err = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert err < 1e-5, (name, err)


@pytest.mark.parametrize("threads", [1, 2])
def test_unpadded_convs_match_the_reference(threads):
    g = conv_graph(UNPADDED_CONVS, seed=threads)
    rng = np.random.default_rng(threads)
    x = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    model = convc.compile(g, threads=threads, cache=False)
    assert all(model.graph.op(f"conv{i}").attrs.algorithm is ConvAlgorithm.IMPLICIT_GEMM_NHWC
               for i in range(len(UNPADDED_CONVS)))
    got, want = model.run(x), run_reference(g, x)
    for name in g.outputs:
        err = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert err < 1e-5, (name, err)


def update_graph(sizes, kind=OpKind.ADAM_UPDATE, attrs=None) -> Graph:
    """One optimizer update per parameter of the given sizes, sharing lr, step and ok."""
    attrs = attrs or AdamAttrs(torch=True)
    g = Graph("updates")
    for name, shp, dt in [("lr", (1,), np.float32), ("step", (1,), np.int64), ("ok", (1,), np.float32)]:
        g.add_tensor(name, shp, dt, TensorKind.INPUT)
    outputs = []
    for i, n in enumerate(sizes):
        names = [f"x{i}", f"g{i}"] + [f"s{i}_{k}" for k in range(attrs.n_states)]
        for t in names:
            g.add_tensor(t, (n,), np.float32, TensorKind.INPUT)
        outputs += g.add_op(kind, attrs, ["lr", "step", "ok"] + names, name=f"update{i}").outputs
    g.inputs = ["lr", "step", "ok"] + [t for i in range(len(sizes)) for t in
                                      [f"x{i}", f"g{i}"] + [f"s{i}_{k}" for k in range(attrs.n_states)]]
    g.outputs = list(outputs)
    return g


def test_updates_of_parameters_of_different_sizes_are_one_kernel_and_match_the_reference():
    sizes = [37, 1000, 3]
    g = update_graph(sizes)
    native = emit_module(pipeline(g, options=CompileOptions(threads=1)), threads=1)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == len(sizes) and len(kernels) == 1
    rng = np.random.default_rng(5)
    feeds = {"lr": np.array([0.05], np.float32), "step": np.array([3], np.int64), "ok": np.array([1.0], np.float32)}
    for t in g.inputs:
        if t not in feeds:
            feeds[t] = rng.standard_normal(g.tensor(t).shape).astype(np.float32)
            if t.startswith("s") and t.endswith("_1"):
                feeds[t] = np.abs(feeds[t])  # Adam's second moment
    got = convc.compile(g, threads=1, cache=False).run({k: v.copy() for k, v in feeds.items()})
    for i in range(len(sizes)):
        op = g.op(f"update{i}")
        want = op_def(op.kind).reference(op.attrs, *[feeds[t] for t in op.inputs])
        for name, w in zip(op.outputs, want):
            np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6)


def test_all_finite_scans_every_input_with_one_function():
    sizes = [1, 37, 1000, 8]
    g = Graph("finite")
    for i, n in enumerate(sizes):
        g.add_tensor(f"t{i}", (n,), np.float32, TensorKind.INPUT)
    g.inputs = [f"t{i}" for i in range(len(sizes))]
    g.outputs = list(g.add_op(OpKind.ALL_FINITE, NoAttrs(), g.inputs, name="finite").outputs)
    model = convc.compile(g, threads=1, cache=False)
    text = str(emit_module(pipeline(g, options=CompileOptions(threads=1))).ir_module)
    assert text.count("@\"convc_nonfinite_scan\"(") == 1 + len(sizes)  # defined once, called per input
    rng = np.random.default_rng(0)
    clean = {t: rng.standard_normal(g.tensor(t).shape).astype(np.float32) for t in g.inputs}
    assert model.run(clean)[g.outputs[0]][0] == 1.0
    # one special anywhere (the first element, a vector's middle, the scalar tail, a lone element)
    for t, at in [("t0", 0), ("t1", 36), ("t2", 517), ("t2", 999), ("t3", 7)]:
        for special in (np.inf, -np.inf, np.nan):
            x = {k: v.copy() for k, v in clean.items()}
            x[t][at] = special
            assert model.run(x)[g.outputs[0]][0] == 0.0, (t, at, special)


def test_silu_through_its_out_of_line_tail_gives_the_inline_forms_bits():
    """Swish kernels call one copy of SiLU's careful form (lanes below -80, -inf, NaN) per module:
    the same bits as the form written inline, over the float32 line, in vectors and the scalar tail."""
    from convc.codegen import vecmath
    from convc.codegen.jit import JitEngine
    from convc.codegen.kernels.activations import swish
    from convc.codegen.kernels.elementwise import vector_map
    from convc.codegen.llvm_utils import I64, PTR, VOID
    from convc.ops.elementwise import SwishAttrs
    import ctypes
    from llvmlite import ir

    module = ir.Module("silu_forms")
    forms = {"inline": lambda b, v: vecmath.silu(b, v[0]), "called": lambda b, v: swish(b, v[0], SwishAttrs())}
    for name, body in forms.items():
        f = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64]), name=name)
        b = ir.IRBuilder(f.append_basic_block())
        vector_map(b, body, [f.args[0]], f.args[1], 0, f.args[2], 8)
        b.ret_void()
    text = str(module)
    assert text.count('define internal <8 x float> @"convc_silu_tail_v8f32"') == 1
    assert text.count('define internal float @"convc_silu_tail_f32"') == 1
    engine = JitEngine(text)
    bits = np.arange(0, 2 ** 32, 65521, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([bits.view(np.float32), np.linspace(-120, 20, 4099, dtype=np.float32),
                        np.array([-np.inf, np.inf, np.nan, -0.0, -80.0, -80.5, -104.0, -1e-45], np.float32)])
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    out = {}
    for name in forms:
        y = np.full_like(x, 7.0)
        proto(engine.address(name))(x.ctypes.data, y.ctypes.data, x.size)
        out[name] = y
    np.testing.assert_array_equal(out["called"].view(np.uint32), out["inline"].view(np.uint32))


def test_swish_convs_share_one_compiled_copy_of_silus_careful_form():
    """EfficientNet's convs end in SiLU: their kernels all call one module's out-of-line careful form."""
    from convc.ops.elementwise import SwishAttrs
    convs = [((2, 9, 11, 5), 7, 1, 1), ((1, 15, 13, 33), 16, 3, 2)]
    g = conv_graph(convs, epilogue=Epilogue(False, OpKind.SWISH, SwishAttrs()))
    native = emit_module(pipeline(g, options=CompileOptions(threads=1)), threads=1)
    modules = split_module(native.ir_module, native.callees)
    tail = r'<8 x float> @"convc_h[0-9a-f]{24}"\(<8 x float>[^,]*\)'  # one vector in, one out
    defining = [m for m in modules if re.search("^define " + tail, m.text, re.M)]
    callers = [m for m in modules if re.search("^declare " + tail, m.text, re.M)]
    assert len(defining) == 1 and len(callers) == len(convs)
    rng = np.random.default_rng(3)
    x = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) * 4 for n in g.inputs}
    got, want = convc.compile(g, threads=1, cache=False).run(x), run_reference(g, x)
    for name in g.outputs:  # sums of up to 297 products: relative to the output's magnitude
        err = np.abs(got[name] - want[name]).max() / max(1.0, np.abs(want[name]).max())
        assert err < 1e-5, (name, err)


def batch_norm_step_graph(shapes) -> Graph:
    """Per shape, a training step's BatchNorm kernels and a ReLU gradient: BatchNormTrain, BatchNormApply
    (clamped at 0, as a fused ReLU), BatchNormGrad, the running update and ReluGrad."""
    from convc.ops.norm import BatchNormAttrs
    from convc.ops.norm_grad import BatchNormApplyAttrs, RunningUpdateAttrs
    g = Graph("bn_step")
    g.add_tensor("ok", (1,), np.float32, TensorKind.INPUT)
    inputs, outputs = ["ok"], []
    for i, (n, c, h, w) in enumerate(shapes):
        names = {t: f"{t}{i}" for t in ("x", "s", "b", "dy", "rm", "rv")}
        for t, name in names.items():
            g.add_tensor(name, (n, c, h, w) if t in ("x", "dy") else (c,), np.float32, TensorKind.INPUT)
        inputs += names.values()
        y, mean, invstd = g.add_op(OpKind.BATCH_NORM_TRAIN, BatchNormAttrs(), [names["x"], names["s"], names["b"]],
                                   name=f"bn{i}").outputs
        (relu,) = g.add_op(OpKind.BATCH_NORM_APPLY, BatchNormApplyAttrs(min=0.0),
                           [names["x"], names["s"], names["b"], mean, invstd], name=f"apply{i}").outputs
        grads = g.add_op(OpKind.BATCH_NORM_GRAD, BatchNormAttrs(), [names["x"], names["s"], mean, invstd, names["dy"]],
                         name=f"bn_grad{i}").outputs
        running = g.add_op(OpKind.BATCH_NORM_RUNNING_UPDATE, RunningUpdateAttrs(0.9, 1e-5, n * h * w),
                           [names["rm"], names["rv"], mean, invstd, "ok"], name=f"running{i}").outputs
        (drelu,) = g.add_op(OpKind.RELU_GRAD, NoAttrs(), [relu, names["dy"]], name=f"relu_grad{i}").outputs
        outputs += [y, mean, invstd, relu, *grads, *running, drelu]
    g.inputs, g.outputs = inputs, outputs
    return g


# a CIFAR ResNet's stages at small batches, odd sizes (vector remainders)
BN_SHAPES = [(4, 16, 9, 7), (3, 5, 4, 6), (2, 64, 3, 3)]


def test_batch_norm_training_kernels_of_every_stage_are_one_kernel_module_each():
    native = emit_module(pipeline(batch_norm_step_graph(BN_SHAPES), options=CompileOptions(threads=2)), threads=2)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == 5 * len(BN_SHAPES) and len(kernels) == 5  # one per kernel kind


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_training_kernels_match_the_reference(threads):
    g = batch_norm_step_graph(BN_SHAPES)
    rng = np.random.default_rng(threads)
    x = {t: (rng.standard_normal(g.tensor(t).shape) * 3 + 1).astype(np.float32) for t in g.inputs}
    x["ok"] = np.ones(1, np.float32)
    for i in range(len(BN_SHAPES)):
        x[f"rv{i}"] = np.abs(x[f"rv{i}"])
    got = convc.compile(g, threads=threads, cache=False).run(x)
    for op in g.ops():
        want = op_def(op.kind).reference(op.attrs, *[got.get(t, x.get(t)) for t in op.inputs])
        for name, w in zip(op.outputs, want):
            np.testing.assert_allclose(got[name], w, rtol=2e-5, atol=2e-6, err_msg=f"{op.name} {name}")


# EfficientNet-B0's squeeze-and-excitation pools (channels last): one last-block shape (C a multiple of
# 32), then C = 24 + 3 (a masked tail after whole vectors) at two image sizes and batches
GLOBAL_POOLS = [(1, 7, 7, 1152), (2, 14, 14, 480), (3, 5, 9, 32), (2, 11, 13, 27), (1, 4, 3, 27)]


@pytest.mark.parametrize("kind", [OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL])
def test_channels_last_global_pools_share_a_kernel_per_last_block_and_match_numpy(kind):
    from convc.ops.layout import CHANNELS_LAST
    from convc.ops.pool import GlobalPoolAttrs
    g = Graph("pools")
    for i, shape in enumerate(GLOBAL_POOLS):
        g.add_tensor(f"x{i}", shape, np.float32, TensorKind.INPUT)
        g.add_op(kind, GlobalPoolAttrs(CHANNELS_LAST), [f"x{i}"], [f"y{i}"], name=f"pool{i}")
    g.inputs, g.outputs = [f"x{i}" for i in range(len(GLOBAL_POOLS))], [f"y{i}" for i in range(len(GLOBAL_POOLS))]
    native = emit_module(pipeline(g, options=CompileOptions(threads=1)), threads=1)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(native.callees) == len(GLOBAL_POOLS) and len(kernels) == 2
    rng = np.random.default_rng(7)
    x = {t: rng.standard_normal(g.tensor(t).shape).astype(np.float32) for t in g.inputs}
    got = convc.compile(g, threads=1, cache=False).run(x)
    for i in range(len(GLOBAL_POOLS)):
        xi = x[f"x{i}"]
        if kind is OpKind.GLOBAL_MAX_POOL:
            want = xi.max(axis=(1, 2), keepdims=True)
        else:  # pixel after pixel in float32, then times 1 / pixels rounded to float32
            total = np.zeros((xi.shape[0], xi.shape[3]), np.float32)
            for p in xi.reshape(xi.shape[0], -1, xi.shape[3]).transpose(1, 0, 2):
                total = total + p
            want = (total * np.float32(1.0 / (xi.shape[1] * xi.shape[2])))[:, None, None, :]
        assert got[f"y{i}"].shape == want.shape
        np.testing.assert_array_equal(got[f"y{i}"], want, err_msg=f"{kind.value} {xi.shape}")

