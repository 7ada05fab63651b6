"""The register-tiled GEMM against numpy: every ISA variant this CPU runs, every operand form,
every way C starts, fused epilogues, and the shapes that exercise the fringes."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from convc.codegen.jit import JitEngine, Target
from convc.codegen.kernels.blas import AVX2, AVX512, PORTABLE, GemmEmitter, Isa, Operand, pack_a, pack_b
from convc.codegen.llvm_utils import PTR, VOID
from convc.ops import OpKind
from convc.ops.elementwise import LeakyReluAttrs
from convc.ops.epilogue import Epilogue

FEATURES = set(Target.host().features.split(","))
RUNNABLE = [isa for isa, need in ((AVX512, "+avx512f"), (AVX2, "+avx2"), (PORTABLE, None))
            if need is None or need in FEATURES]

# (M, N, K): ones, primes, exact tiles, fringes on both edges, K=1, and CNN-shaped products
SHAPES = [(1, 1, 1), (1, 33, 7), (7, 13, 5), (8, 32, 1), (13, 17, 257), (17, 45, 300), (64, 196, 64),
          (3, 100, 513), (48, 64, 128), (31, 97, 2)]


def build(isa: Isa, m: int, n: int, k: int, a_packed: bool, b_packed: bool, init: str, epi: Epilogue):
    module = ir.Module("gemm_test")
    gemm = GemmEmitter(module, isa)
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 5), name="run")
    b = ir.IRBuilder(fn.append_basic_block())
    pa, pb, pc, bias, residual = fn.args
    gemm.gemm(b, m, n, k, pa, Operand(a_packed, k), pb, Operand(b_packed, n), pc, n, init, bias, epi, residual)
    b.ret_void()
    engine = JitEngine(str(module))
    return engine, ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 5)(engine.address("run"))


def expected(a, b, init, bias, c0, residual, epi):
    y = a.astype(np.float64) @ b.astype(np.float64)
    m, n = y.shape
    y += {"zero": 0.0, "bias_row": bias[:m, None], "bias_col": bias[None, :n], "load": c0}[init]
    if epi.residual:
        y += residual
    if epi.activation is OpKind.RELU:
        y = np.maximum(y, 0)
    elif epi.activation is OpKind.LEAKY_RELU:
        y = np.where(y < 0, epi.activation_attrs.alpha * y, y)
    elif epi.activation is OpKind.SIGMOID:
        y = 1 / (1 + np.exp(-y))
    return y


def run_case(isa, m, n, k, a_packed, b_packed, init, epi, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(max(m, n)).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    engine, fn = build(isa, m, n, k, a_packed, b_packed, init, epi)
    ap = pack_a(a, isa) if a_packed else a
    bp = pack_b(b, isa) if b_packed else b
    c = c0.copy()
    fn(ap.ctypes.data, bp.ctypes.data, c.ctypes.data, bias.ctypes.data, residual.ctypes.data)
    want = expected(a, b, init, bias, c0, residual, epi)
    err = np.abs(c - want).max() / max(1.0, np.abs(want).max())
    assert err < 1e-5, f"{isa.name} M={m} N={n} K={k} packed A={a_packed} B={b_packed} init={init}: {err}"


@pytest.mark.parametrize("isa", RUNNABLE, ids=lambda i: i.name)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("a_packed,b_packed", [(True, False), (False, True), (True, True), (False, False)])
def test_gemm_shapes_and_operand_forms(isa, m, n, k, a_packed, b_packed):
    run_case(isa, m, n, k, a_packed, b_packed, "zero", Epilogue())


@pytest.mark.parametrize("isa", RUNNABLE, ids=lambda i: i.name)
@pytest.mark.parametrize("init", ["zero", "bias_row", "bias_col", "load"])
@pytest.mark.parametrize("epi", [Epilogue(), Epilogue(True), Epilogue(False, OpKind.RELU),
                                 Epilogue(True, OpKind.LEAKY_RELU, LeakyReluAttrs(0.2)),
                                 Epilogue(False, OpKind.SIGMOID)], ids=["none", "residual", "relu", "res+leaky",
                                                                        "sigmoid"])
def test_gemm_init_and_fused_epilogue(isa, init, epi):
    run_case(isa, 19, 37, 23, True, False, init, epi)


def test_packing_layouts_zero_pad_the_fringe():
    a = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    pa = pack_a(a, AVX512)  # [ceil(10/8), K, 8]
    assert pa.shape == (2, 3, 8)
    assert np.array_equal(pa[0, :, :], a[:8].T) and np.array_equal(pa[1, :, :2], a[8:].T)
    assert not pa[1, :, 2:].any()
    b = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    pb = pack_b(b, AVX512)  # [ceil(40/32), K, 32]
    assert pb.shape == (2, 3, 32)
    assert np.array_equal(pb[1, :, :8], b[:, 32:]) and not pb[1, :, 8:].any()


@pytest.mark.parametrize("m,n,act", [
    (203, 40, "Relu"),   # many row tiles, 2 column panels: threads split the rows
    (203, 40, "Tanh"),   # ... and each finishes its rows' scalar activation pass
    (5, 300, "Tanh"),    # a fully connected layer: threads split the column panels
])
def test_gemm_op_splits_rows_or_panels_between_threads(m, n, act):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import convc
    rng = np.random.default_rng(m + n)
    k = 37
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "b"], ["g"], transB=1), helper.make_node(act, ["g"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = rng.standard_normal((m, k)).astype(np.float32)
    z = a.astype(np.float64) @ w.T.astype(np.float64) + bias
    want = np.maximum(z, 0) if act == "Relu" else np.tanh(z)
    outs = [convc.compile(model, threads=t, cache=False)(a) for t in (1, 2, 3)]
    assert np.abs(outs[0] - want).max() < 1e-4
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
