"""Gemm (transposes, alpha/beta, every C broadcast, constant and fed B) and MatMul (numpy semantics)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close, check_op

import convc
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def
from convc.ops.gemm import GemmAttrs


def run_gemm(rng: np.random.Generator, m: int, k: int, n: int, attrs: GemmAttrs,
             c_shape: tuple[int, ...] | None, const: frozenset[int]) -> None:
    a = rng.uniform(-1, 1, (k, m) if attrs.trans_a else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if attrs.trans_b else (k, n)).astype(np.float32)
    inputs = [a, b] + ([rng.uniform(-1, 1, c_shape).astype(np.float32)] if c_shape is not None else [])
    check_op(OpKind.GEMM, attrs, inputs, const=const)


B_CONST = frozenset({1, 2})
B_INPUT = frozenset({2})


@pytest.mark.parametrize("const", [B_CONST, B_INPUT], ids=["B-const", "B-input"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
def test_gemm_transposes(rng, trans_a, trans_b, const):
    """A transposed constant B is transposed at compile time; a fed one is read with strides."""
    run_gemm(rng, 5, 7, 6, GemmAttrs(0.5, 2.0, trans_a, trans_b), (6,), const)


@pytest.mark.parametrize("const", [B_CONST, frozenset()], ids=["B-C-const", "all-inputs"])
@pytest.mark.parametrize("c_shape", [(6,), (1, 6), (5, 1), (5, 6), (1,), (), None],
                         ids=["N", "1xN", "Mx1", "MxN", "1", "scalar", "no-C"])
def test_gemm_c_broadcast(rng, c_shape, const):
    run_gemm(rng, 5, 7, 6, GemmAttrs(1.5, -0.75, False, True), c_shape, const)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (-2.0, 0.25)])
def test_gemm_alpha_beta(rng, alpha, beta):
    run_gemm(rng, 4, 3, 5, GemmAttrs(alpha, beta, True, False), (4, 5), frozenset())


@pytest.mark.parametrize("const", [B_CONST, B_INPUT], ids=["B-const", "B-input"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 13), (13, 1, 7), (7, 257, 13), (3, 13, 257), (2, 5, 513)])
def test_gemm_odd_sizes(rng, m, k, n, trans_b, const):
    """N = 257 and 513 cross the 256-column block of the matrix-product loop nest."""
    run_gemm(rng, m, k, n, GemmAttrs(1.0, 1.0, False, trans_b), (n,), const)


@pytest.mark.parametrize("a_shape,b_shape", [
    ((5, 7), (7, 6)),
    ((1, 13), (13, 1)),
    ((7, 257), (257, 3)),
    ((3, 4, 5), (3, 5, 2)),        # batched 3-D
    ((3, 4, 5), (5, 2)),           # 2-D B broadcast over A's batch
    ((4, 5), (3, 5, 2)),           # 2-D A broadcast over B's batch
    ((2, 1, 4, 5), (3, 5, 2)),     # 4-D x 3-D: batch (2, 1) and (3,) broadcast to (2, 3)
    ((1, 3, 4, 5), (2, 1, 5, 3)),  # batch dims broadcast on both sides
    ((5,), (5, 3)),                # 1-D A: prepended 1 removed from the result
    ((5,), (2, 5, 3)),
    ((2, 4, 5), (5,)),             # 1-D B: appended 1 removed from the result
    ((5,), (5,)),                  # dot product: a scalar
])
@pytest.mark.parametrize("const", [frozenset(), frozenset({1})], ids=["B-input", "B-const"])
def test_matmul(rng, a_shape, b_shape, const):
    a = rng.uniform(-1, 1, a_shape).astype(np.float32)
    b = rng.uniform(-1, 1, b_shape).astype(np.float32)
    check_op(OpKind.MATMUL, NoAttrs(), [a, b], const=const)


@pytest.mark.parametrize("kind,attrs", [
    (OpKind.MATMUL, NoAttrs()),
    (OpKind.GEMM, GemmAttrs(1.0, 1.0, False, True)),
    (OpKind.GEMM, GemmAttrs(1.0, 1.0, True, False)),
], ids=["MatMul", "Gemm-Bt", "Gemm-At"])
def test_same_tensor_as_a_and_b(rng, kind, attrs):
    """x @ x, x @ x.T and x.T @ x: one graph tensor bound to both operands."""
    x = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
    g = Graph("square")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_op(kind, attrs, ["x", "x"], ["y"])
    g.outputs = ["y"]
    g.verify()
    (want,) = op_def(kind).reference(attrs, x, x)
    assert_close(convc.compile(g).run({"x": x})["y"], want, RTOL, kind.value)
