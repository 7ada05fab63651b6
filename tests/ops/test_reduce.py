"""The reduction kernels (codegen/kernels/reduce.py) and the Reduce* ops built on them, at sizes that leave
vector remainders: every axes set of rank-2, -3 and -4 tensors with keepdims on and off, all nine ONNX
reductions in one model per shape (one compile), 1 and 2 threads, against numpy in float64; +-inf and NaN
as numpy; the kernels are vector code."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from onnx import TensorProto, helper

import convc

OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
       "ReduceLogSumExp"]


def numpy_reduce(op: str, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if op == "ReduceLogSumExp":
            m = x.max(axis=axes, keepdims=True)
            y = np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m
            return y if keepdims else y.squeeze(axis=axes)
        f = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min,
             "ReduceProd": np.prod, "ReduceL1": lambda v, **k: np.abs(v).sum(**k),
             "ReduceL2": lambda v, **k: np.sqrt(np.square(v).sum(**k)),
             "ReduceSumSquare": lambda v, **k: np.square(v).sum(**k)}[op]
        return f(x, axis=axes, keepdims=keepdims)


PRIMITIVES = ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]  # the kernels; the others are built on them


def every_axes_set(rank: int) -> list[tuple[int, ...]]:
    return [a for k in range(1, rank + 1) for a in itertools.combinations(range(rank), k)]


def some_axes_sets(rank: int) -> list[tuple[int, ...]]:
    """The last axis, the second, and all but the first (a classifier's row, channels, a per-sample norm)."""
    return sorted({(rank - 1,), (min(1, rank - 1),), tuple(range(1, rank)) or (0,)})


def grid_model(shape: tuple[int, ...], ops=OPS, axes_sets=None):
    """One node per (op, axes set) -- the primitive kernels on every axes set, the composite reductions on
    a few -- with keepdims alternating, and both for the full set; ReduceProd reads ``p`` (values near 1,
    so a product over thousands of elements stays finite), the others ``x``.
    Returns (model, {output: (op, axes, keepdims)})."""
    rank = len(shape)
    nodes, outputs, cases = [], [], {}
    for op in ops:
        sets = axes_sets or (every_axes_set(rank) if op in PRIMITIVES else some_axes_sets(rank))
        for i, axes in enumerate(sets):
            for keepdims in (0, 1) if len(axes) == rank else ((i + len(op)) % 2,):
                name = f"{op}_{'_'.join(map(str, axes))}_{keepdims}"
                src = "p" if op == "ReduceProd" else "x"
                nodes.append(helper.make_node(op, [src], [name], axes=list(axes), keepdims=keepdims))
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
                cases[name] = (op, axes, bool(keepdims))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "p")]
    graph = helper.make_graph(nodes, "reductions", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), \
        cases


def feeds(shape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": (rng.standard_normal(shape) * 2).astype(np.float32),
            "p": (1 + rng.uniform(-2e-3, 2e-3, shape)).astype(np.float32)}


def check(op: str, got: np.ndarray, x: np.ndarray, axes, keepdims: bool, what: str) -> None:
    want = numpy_reduce(op, x, axes, keepdims)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, numpy {want.shape}"
    assert got.dtype == np.float32
    # float32 accumulation over n elements: a few ulps of the sum of magnitudes
    n = int(np.prod([x.shape[a] for a in axes]))
    scale = numpy_reduce("ReduceL1", x, axes, keepdims) / (n if op in ("ReduceMean", "ReduceLogSumExp") else 1)
    if op in ("ReduceSumSquare", "ReduceL2"):
        scale = numpy_reduce("ReduceSumSquare", x, axes, keepdims)
        scale = np.sqrt(scale) if op == "ReduceL2" else scale
    tol = 4e-7 * np.sqrt(n) * (scale if op not in ("ReduceMax", "ReduceMin", "ReduceProd") else np.abs(want)) + 1e-6
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= tol * 10).all(), f"{what}: max error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


# (shape, threads): batch 16-32, odd spatial sizes and channel counts that leave vector remainders, a
# classifier's rows, a size-1 axis; each compiled once with every reduction in it
GRID = [((32, 1003), 1), ((32, 1003), 2), ((16, 24, 33, 35), 1), ((32, 7, 29, 3), 2), ((16, 197, 65), 2),
        ((2, 5, 1, 9), 1)]


@pytest.mark.parametrize("shape,threads", GRID, ids=["x".join(map(str, s)) + f"-t{t}" for s, t in GRID])
def test_every_axes_set_and_keepdims_against_numpy(shape, threads):
    model, cases = grid_model(shape)
    f = feeds(shape, seed=len(shape) + threads)
    got = convc.compile(model, threads=threads, cache=False).run(f)
    for name, (op, axes, keepdims) in cases.items():
        check(op, got[name], f["p" if op == "ReduceProd" else "x"], axes, keepdims, f"{name} of {shape}")


SPECIALS_SHAPE = (3, 5, 37)  # 37 = 4 vectors of 8 + a half vector + 1 scalar; 5 * 37 leaves odd tiles too


@pytest.fixture(scope="module")
def specials():
    model, cases = grid_model(SPECIALS_SHAPE, ops=["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
    return convc.compile(model, threads=2, cache=False), cases


@pytest.mark.parametrize("where", ["vector", "tail", "strided"])
def test_inf_and_nan_as_numpy(specials, where):
    """NaN anywhere makes its outputs NaN (max and min too); inf + -inf is NaN; a lone inf wins a max and is
    the sum; placed in a vector lane, in the scalar tail, and along a reduced axis that is not contiguous."""
    model, cases = specials
    rng = np.random.default_rng(7)
    x = rng.standard_normal(SPECIALS_SHAPE).astype(np.float32)
    col = {"vector": 3, "tail": 36, "strided": 20}[where]
    x[0, 1, col] = np.nan
    x[1, 2, col] = np.inf
    x[1, 4, col] = -np.inf  # row 1 (and column col) meet +inf and -inf
    x[2, 0, col] = np.inf
    x[2, 3, (col + 5) % 37] = -np.inf
    got = model.run({"x": x, "p": x})
    for name, (op, axes, keepdims) in cases.items():
        want = numpy_reduce(op, x, axes, keepdims).astype(np.float32)
        g = got[name]
        special = ~np.isfinite(want)
        assert special.any(), name
        np.testing.assert_array_equal(g[special], want[special], err_msg=name)  # NaN where numpy has NaN
        np.testing.assert_allclose(g[~special], want[~special], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("axes", [(2,), (1,), (0, 2)], ids=["contiguous", "kept-inner", "mixed"])
def test_the_kernels_are_vector_code(axes):
    """Both kernel forms load and combine whole vectors (their IR has <w x float> accumulators)."""
    from convc.codegen.module import emit_module
    from convc.frontend.onnx import import_onnx
    from convc.passes.pipeline import pipeline
    model, _ = grid_model((4, 67, 131), ops=["ReduceMax"], axes_sets=[axes])
    plan = pipeline(import_onnx(model))
    native = emit_module(plan)
    (fn,) = [f for op, f in native.kernel_names if "Reduce" in op]
    body = re.search(rf"define [^@]*@\"?{re.escape(fn)}\"?\(.*?\n}}", str(native.ir_module), re.S).group(0)
    assert re.search(r"load <\d+ x float>", body), body[:2000]


def test_the_kernels_compile_for_avx512():
    """Emitted for znver4 (16 lanes; compiled, not run: no AVX-512 here), both forms use zmm registers."""
    import llvmlite.binding as llvm

    import convc.codegen.kernels  # noqa: F401  (registers the emitters)
    from convc.codegen.jit import Target
    from convc.codegen.module import ModuleEmitter
    from convc.frontend.onnx import import_onnx
    from convc.passes.pipeline import pipeline
    model, _ = grid_model((4, 67, 131), ops=PRIMITIVES, axes_sets=[(2,), (0, 1), (0, 2)])
    plan = pipeline(import_onnx(model))
    host = Target.host()
    cpu, feats = "znver4", "+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq"
    target = Target(host.triple, cpu, feats)
    text = str(ModuleEmitter(plan, target=target).emit().ir_module)
    assert "<16 x float>" in text
    module = llvm.parse_assembly(text)
    tm = llvm.Target.from_triple(target.triple).create_target_machine(cpu=cpu, features=feats, opt=3)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(module, pb)
    assert "zmm" in tm.emit_assembly(module)
