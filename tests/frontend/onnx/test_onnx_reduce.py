"""The Reduce* family: axes as attribute (before opsets 18 / 13) and as input, keepdims, empty axes, the
spatial mean as GlobalAveragePool, LogSumExp without overflow, constant folding; compiled at real sizes
against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import INT64, check_model, make_model, op_kinds, run_onnx

import convc
from convc.ops import OpKind

from convc.frontend.onnx.reduce import REDUCE_OPS

AXES_INPUT_SINCE = {op: since for op, (since, _) in REDUCE_OPS.items()}
ALL = sorted(REDUCE_OPS)


def reduce_model(op: str, shape, axes, keepdims: int | None, opset: int, noop: int | None = None,
                 relu: bool = True):
    inputs, inits, attrs = ["R" if relu else "X"], {}, {}
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    if axes is not None:
        if opset >= AXES_INPUT_SINCE[op]:
            inputs.append("axes")
            inits["axes"] = np.array(axes, np.int64)
        else:
            attrs["axes"] = axes
    # a Relu first, so the reduction reads a computed tensor as in a real network
    nodes = [helper.make_node("Relu", ["X"], ["R"])] * relu + [helper.make_node(op, inputs, ["Y"], **attrs)]
    return make_model(nodes, {"X": shape}, ["Y"], inits, opset=opset)


# (axes, keepdims): every kind of reduction an exported CNN uses, and the odd ones
CASES = [([2, 3], 1), ([2, 3], 0), ([-1, -2], 1), ([1], 1), ([1], 0), ([0, 2], 1), (None, 1), (None, 0), ([3], 0),
         ([0], 1)]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("axes,keepdims", CASES)
def test_reduce_matches_onnxruntime_at_import(op, opset, axes, keepdims):
    check_model(reduce_model(op, (2, 5, 7, 9), axes, keepdims, opset))


@pytest.mark.parametrize("op", ALL)
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([1], 0), (None, 0), ([0, 2], 1)])
def test_every_reduction_matches_onnxruntime(op, opset, axes, keepdims):
    """On signed values (no Relu first): L1, Max, Min and Prod see negatives; LogSum on positive ones."""
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 4)).astype(np.float32)
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.1
    check_model(reduce_model(op, (2, 5, 3, 4), axes, keepdims, opset, relu=False), feeds={"X": x})


@pytest.mark.parametrize("op,axes,keepdims,threads", [
    ("ReduceMean", [2, 3], 1, 1), ("ReduceMean", [2, 3], 0, 2), ("ReduceMean", [1], 1, 2), ("ReduceMean", None, 0, 1),
    ("ReduceSum", [2, 3], 1, 2), ("ReduceSum", [0, 2], 0, 1), ("ReduceSum", [-1], 1, 2),
    ("ReduceMax", [1], 1, 2), ("ReduceMin", [2, 3], 0, 1), ("ReduceL2", [3], 1, 2), ("ReduceL1", [1, 3], 0, 1),
    ("ReduceLogSumExp", [1], 0, 2), ("ReduceSumSquare", [0], 1, 1), ("ReduceLogSum", [2], 1, 2)])
def test_compiled_reduce_at_real_sizes(op, axes, keepdims, threads):
    """Batch 16, 112x97 maps with 24 channels (odd widths leave vector remainders)."""
    model = reduce_model(op, (16, 24, 112, 97), axes, keepdims, 18)
    x = np.random.default_rng(3).standard_normal((16, 24, 112, 97)).astype(np.float32)
    want = run_onnx(model, {"X": x})["Y"]
    got = convc.compile(model, threads=threads).run({"X": x})["Y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))


def test_spatial_mean_is_a_global_average_pool():
    """x.mean((2, 3), keepdim=True) in a squeeze-and-excitation block: GlobalAveragePool's kernels and gradient."""
    g = check_model(reduce_model("ReduceMean", (2, 8, 5, 5), [2, 3], 1, 18))
    assert op_kinds(g) == [OpKind.RELU, OpKind.GLOBAL_AVERAGE_POOL]
    g = check_model(reduce_model("ReduceMean", (2, 8, 5, 5), [-2, -1], 0, 13))
    assert op_kinds(g) == [OpKind.RELU, OpKind.GLOBAL_AVERAGE_POOL, OpKind.RESHAPE]
    g = check_model(reduce_model("ReduceMean", (2, 8, 5, 5), [1], 1, 13))
    assert op_kinds(g) == [OpKind.RELU, OpKind.REDUCE_SUM, OpKind.MUL]


def test_log_sum_exp_does_not_overflow():
    """exp(100) overflows float32; m + log(sum(exp(x - m))) does not."""
    model = reduce_model("ReduceLogSumExp", (4, 6), [1], 0, 18, relu=False)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32) + 100.0
    got = convc.compile(model).run({"X": x})["Y"]
    want = np.log(np.exp(x.astype(np.float64) - 100.0).sum(axis=1)) + 100.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_max_and_min_propagate_nan():
    model = reduce_model("ReduceMax", (3, 5), [1], 0, 18, relu=False)
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    x[1, 2] = np.nan
    got = convc.compile(model).run({"X": x})["Y"]
    assert np.isnan(got[1]) and got[0] == 4 and got[2] == 14


def test_empty_axes():
    """No axes reduce everything; with noop_with_empty_axes (the axes-input opsets) the node is an identity."""
    g = check_model(reduce_model("ReduceSum", (3, 4, 5), None, 1, 13, noop=1))
    assert op_kinds(g) == [OpKind.RELU, OpKind.IDENTITY] or op_kinds(g) == [OpKind.RELU]
    assert g.tensor("Y").shape == (3, 4, 5)
    g = check_model(reduce_model("ReduceMean", (3, 4, 5), None, 0, 18, noop=0))
    assert g.tensor("Y").shape == ()


def test_reductions_of_constants_fold_at_import():
    """Shape arithmetic: ReduceSum of an integer tensor is computed at import, not compiled."""
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("ReduceSum", ["s", "axes"], ["n"], keepdims=1),
             helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["X", "target"], ["Y"])]
    model = make_model(nodes, {"X": (3, 6)}, ["Y"], {"axes": np.array([0], np.int64),
                                                     "rest": np.array([-1], np.int64)}, opset=13)
    g = check_model(model)
    assert g.tensor("Y").shape == (9, 2)  # 3 + 6 rows
    assert OpKind.REDUCE_SUM not in op_kinds(g)
    nodes = [helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Add", ["X", "m"], ["Y"])]
    c = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = check_model(make_model(nodes, {"X": (3,)}, ["Y"], {"c": c}, opset=13))
    assert op_kinds(g) == [OpKind.ADD]


def test_bad_axes_name_the_node():
    with pytest.raises(convc.ModelImportError, match="axes"):
        convc.compile(reduce_model("ReduceMean", (2, 3, 4, 5), [4], 1, 13))
    with pytest.raises(convc.ModelImportError, match="repeats"):
        convc.compile(reduce_model("ReduceSum", (2, 3, 4, 5), [1, -3], 1, 13))
    model = reduce_model("ReduceMean", (2, 3, 4, 5), [1], 1, 18)
    model.graph.initializer[0].data_type = 1  # float axes
    with pytest.raises(convc.ConvcError, match="axes"):
        convc.compile(model)


@pytest.mark.slow
def test_a_squeeze_and_excitation_net_trains():
    """An SE block exported as PyTorch writes it (mean over H, W, keepdim) trains, gradients checked by
    finite differences."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    s1 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    s2 = (rng.standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32)
    fc = (rng.standard_normal((5, 8)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Conv", ["m", "s1"], ["e1"]), helper.make_node("Relu", ["e1"], ["e2"]),
             helper.make_node("Conv", ["e2", "s2"], ["e3"]), helper.make_node("Sigmoid", ["e3"], ["e4"]),
             helper.make_node("Mul", ["r", "e4"], ["se"]),
             helper.make_node("ReduceMean", ["se"], ["p"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["p", "fc"], ["Y"], transB=1)]
    model = make_model(nodes, {"X": (4, 3, 9, 11)}, ["Y"], {"w1": w1, "s1": s1, "s2": s2, "fc": fc}, opset=13)
    x = rng.standard_normal((4, 3, 9, 11)).astype(np.float32)
    y = np.array([0, 1, 2, 4])
    result = convc.gradcheck(model, x, y, samples=4)
    assert result.ok, result
