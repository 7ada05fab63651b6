"""Floor, Ceil and Round (half to even): compiled against numpy, ONNX's reference and onnxruntime at batch 16
with odd widths (vector remainders), 1 and 2 threads, bit for bit: halves, -0.0, values beyond 2**23 (already
integers), the largest floats, +-inf and NaN; constants fold; the gradient through them is zero."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import check_op
from onnx import TensorProto, helper

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import NoAttrs, OpKind

OPS = {"Floor": (OpKind.FLOOR, np.floor), "Ceil": (OpKind.CEIL, np.ceil), "Round": (OpKind.ROUND, np.round)}
SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 1e-30, -1e-30, 1e-42, 8388607.5,
           -8388607.5, 8388609.0, 16777216.0, 3e38, -3e38, np.inf, -np.inf, np.nan]


def model(op: str, shape, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def values(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    flat = x.reshape(-1)
    flat[:len(SPECIAL)] = SPECIAL
    ties = flat[len(SPECIAL):len(SPECIAL) + 100]
    ties[:] = rng.integers(-20, 20, ties.size) + 0.5  # halves, from even and odd integers
    return x


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]))  # floor(-0.0) = -0.0, ceil(-0.5) = -0.0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op", list(OPS))
def test_against_onnxruntime(op, threads):
    import onnxruntime
    shape = (16, 3, 29, 23)
    m = model(op, shape)
    x = values(shape)
    session = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    got = convc.compile(m, threads=threads).run({"x": x})["y"]
    same_bits(got, want)
    same_bits(got, OPS[op][1](x))


@pytest.mark.parametrize("op", list(OPS))
def test_against_reference(op):
    check_op(OPS[op][0], NoAttrs(), [values((2, 3, 7, 5), seed=1)], rtol=1e-12)


@pytest.mark.parametrize("op", list(OPS))
def test_a_constant_input_folds(op):
    c = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.7, -0.7], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["c"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [8], c)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert [o.kind for o in import_onnx(m).ops()] == [OpKind.ADD]
    x = np.zeros((2, 8), np.float32)
    np.testing.assert_array_equal(convc.compile(m).run({"x": x})["y"], np.broadcast_to(OPS[op][1](c), (2, 8)))


@pytest.mark.parametrize("op", list(OPS))
def test_gradient_is_zero(op):
    """Away from the steps (integers; halves for Round) finite differences and the compiled UnaryGrad agree: 0."""
    from train.grad_helpers import check_gradient
    rng = np.random.default_rng(2)
    x = (rng.integers(-5, 5, (3, 4, 5)) + rng.choice([0.2, 0.3, 0.7, 0.8], (3, 4, 5))).astype(np.float32)
    grads = check_gradient(OPS[op][0], NoAttrs(), [x], rng=rng)
    assert all(not np.any(g) for g in grads.values())
