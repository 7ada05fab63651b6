"""Gradients of Gemm/MatMul, pooling, batch normalization, activations, Softmax, Dropout, and the
data-movement ops (Add with broadcasting, Mul, Sum, Flatten/Reshape, Concat)."""
from __future__ import annotations

import numpy as np
import pytest

from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import (ClipAttrs, EluAttrs, GeluAttrs, HardSigmoidAttrs, LeakyReluAttrs, SeluAttrs,
                                   SwishAttrs)
from convc.ops.elementwise_grad import DropoutTrainAttrs, dropout_keep
from convc.ops.gemm import GemmAttrs
from convc.ops.norm import BatchNormAttrs
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs
from convc.ops.shape import ConcatAttrs, FlattenAttrs, ReshapeAttrs
from convc.ops.softmax import SoftmaxAttrs
from train.grad_helpers import check_gradient


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --- Gemm and MatMul ----------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm(rng, trans_a, trans_b):
    m, k, n = 5, 7, 19  # n spans a partial vector of the micro-kernel
    a = f32(rng, k, m) if trans_a else f32(rng, m, k)
    b = f32(rng, n, k) if trans_b else f32(rng, k, n)
    check_gradient(OpKind.GEMM, GemmAttrs(trans_a=trans_a, trans_b=trans_b), [a, b, f32(rng, n)], wrt=(0, 1, 2),
                   rng=rng)


@pytest.mark.parametrize("c_shape", [(1, 6), (4, 1), (4, 6), ()])
def test_gemm_alpha_beta_broadcast_c(rng, c_shape):
    check_gradient(OpKind.GEMM, GemmAttrs(alpha=0.5, beta=2.0), [f32(rng, 4, 3), f32(rng, 3, 6), f32(rng, *c_shape)],
                   wrt=(0, 1, 2), rng=rng)


@pytest.mark.parametrize("a_shape", [(5, 4), (2, 3, 4)])
def test_matmul(rng, a_shape):
    check_gradient(OpKind.MATMUL, NoAttrs(), [f32(rng, *a_shape), f32(rng, 4, 6)], wrt=(0, 1), rng=rng)


# --- pooling --------------------------------------------------------------------------------------------
POOLS = [
    PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),               # overlapping windows
    PoolAttrs((3, 2), (2, 1), (1, 0, 0, 1), (1, 1)),               # asymmetric pads
    PoolAttrs((2, 2), (1, 1), (0, 0, 0, 0), (2, 2)),               # dilation
    PoolAttrs((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), ceil_mode=True),
    PoolAttrs((2, 2), (3, 3), (0, 0, 0, 0), (1, 1)),               # disjoint windows with gaps between them
    PoolAttrs((2, 3), (2, 3), (0, 0, 0, 0), (1, 1)),               # windows tiling 7x6 but for the last row
]


@pytest.mark.parametrize("attrs", POOLS)
def test_max_pool(rng, attrs):
    check_gradient(OpKind.MAX_POOL, attrs, [f32(rng, 2, 3, 7, 6)], rng=rng)


@pytest.mark.parametrize("attrs", POOLS + [PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), count_include_pad=True),
                                           PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), ceil_mode=True,
                                                     count_include_pad=True)])
def test_average_pool(rng, attrs):
    check_gradient(OpKind.AVERAGE_POOL, attrs, [f32(rng, 2, 3, 7, 6)], rng=rng)


def test_max_pool_tiling_windows(rng):
    """2x2/2 windows covering an 8x8 input exactly: the gradient is stored, no memset."""
    check_gradient(OpKind.MAX_POOL, POOLS[0], [f32(rng, 2, 3, 8, 8)], rng=rng)


def test_pool1d(rng):
    check_gradient(OpKind.MAX_POOL, PoolAttrs((3,), (2,), (1, 1), (1,)), [f32(rng, 2, 3, 9)], rng=rng)
    check_gradient(OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,)), [f32(rng, 2, 3, 9)], rng=rng)


@pytest.mark.parametrize("kind", [OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL])
def test_global_pool(rng, kind):
    check_gradient(kind, GlobalPoolAttrs(), [f32(rng, 2, 3, 5, 4)], rng=rng)


def test_max_pool_ties_go_to_the_first_maximum():
    """Ties route the whole gradient to the first maximum in scan order (PyTorch's choice)."""
    from convc.ops import op_def
    from convc.ops.pool_grad import PoolGradAttrs
    x = np.array([[[[1.0, 3.0], [3.0, 3.0]]]], dtype=np.float32)
    (dx,) = op_def(OpKind.MAX_POOL_GRAD).reference(
        PoolGradAttrs(PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), x.shape), x, np.ones((1, 1, 1, 1), np.float32))
    assert dx.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]
    from convc.driver import compile_training_graph as compile_graph

    from train.grad_helpers import grad_graph
    g, _ = grad_graph(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), [x], [0])
    got = compile_graph(g).run({"x0": x, "dy": np.ones((1, 1, 1, 1), np.float32)})[g.outputs[0]]
    np.testing.assert_array_equal(got, dx)


# --- batch normalization (training mode) ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (3, 2, 7)])
def test_batch_norm_train(rng, shape):
    c = shape[1]
    x = f32(rng, *shape, scale=2.0) + 1.0
    check_gradient(OpKind.BATCH_NORM_TRAIN, BatchNormAttrs(epsilon=1e-3),
                   [x, f32(rng, c) + 1.0, f32(rng, c)], wrt=(0, 1, 2), rng=rng)


# --- activations and Softmax ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,attrs", [(OpKind.RELU, NoAttrs()), (OpKind.LEAKY_RELU, LeakyReluAttrs(0.1)),
                                        (OpKind.LEAKY_RELU, LeakyReluAttrs(-0.5)),
                                        (OpKind.SIGMOID, NoAttrs()), (OpKind.TANH, NoAttrs()),
                                        (OpKind.IDENTITY, NoAttrs()),
                                        # through UnaryGrad and the derivative their OpDef declares
                                        (OpKind.ELU, EluAttrs(0.7)), (OpKind.SELU, SeluAttrs()),
                                        (OpKind.SOFTPLUS, NoAttrs()), (OpKind.SOFTSIGN, NoAttrs()),
                                        (OpKind.SWISH, SwishAttrs()), (OpKind.SWISH, SwishAttrs(1.702)),
                                        (OpKind.ERF, NoAttrs()), (OpKind.GELU, GeluAttrs()),
                                        (OpKind.GELU, GeluAttrs("tanh")), (OpKind.MISH, NoAttrs())])
def test_activation(rng, kind, attrs):
    x = f32(rng, 3, 4, 5)
    x[np.abs(x) < 1e-3] = 0.5  # finite differences must not straddle the kink at 0
    check_gradient(kind, attrs, [x], rng=rng)


# kinked or restricted to a domain: x kept off the kinks (Clip's bounds, HardSigmoid's and HardSwish's +-3,
# Abs's 0) and positive where the function needs it (Log, Sqrt, Reciprocal)
@pytest.mark.parametrize("kind,attrs,lo,kinks", [
    (OpKind.CLIP, ClipAttrs(0.0, 6.0), -3.0, (0.0, 6.0)), (OpKind.CLIP, ClipAttrs(-1.0, 1.0), -3.0, (-1.0, 1.0)),
    (OpKind.HARD_SIGMOID, HardSigmoidAttrs(), -4.0, (-2.5, 2.5)),
    (OpKind.HARD_SIGMOID, HardSigmoidAttrs(1 / 6, 0.5), -4.0, (-3.0, 3.0)),
    (OpKind.HARD_SWISH, NoAttrs(), -4.0, (-3.0, 3.0)), (OpKind.NEG, NoAttrs(), -3.0, ()),
    (OpKind.ABS, NoAttrs(), -3.0, (0.0,)), (OpKind.EXP, NoAttrs(), -3.0, ()), (OpKind.LOG, NoAttrs(), 0.1, ()),
    (OpKind.SQRT, NoAttrs(), 0.1, ()), (OpKind.RECIPROCAL, NoAttrs(), 0.2, ())])
def test_piecewise_and_domain_activation(rng, kind, attrs, lo, kinks):
    x = rng.uniform(lo, 7.0, (3, 4, 5)).astype(np.float32)
    for k in kinks:
        x[np.abs(x - k) < 1e-2] = k + 0.05
    check_gradient(kind, attrs, [x], rng=rng, samples=60)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax(rng, axis):
    check_gradient(OpKind.SOFTMAX, SoftmaxAttrs(axis), [f32(rng, 3, 4, 5)], rng=rng)


# --- dropout ---------------------------------------------------------------------------------------------
def test_dropout_train(rng):
    a = DropoutTrainAttrs(0.3, seed=7, salt=1)
    check_gradient(OpKind.DROPOUT_TRAIN, a, [f32(rng, 4, 50), np.array([5], dtype=np.int64)], rng=rng)


def test_dropout_mask_is_reproducible_and_has_the_right_rate():
    a = DropoutTrainAttrs(0.25, seed=3, salt=0)
    m1, m2 = dropout_keep(a, 10, 100_000), dropout_keep(a, 10, 100_000)
    assert np.array_equal(m1, m2)
    assert abs(m1.mean() - 0.75) < 0.005
    assert (m1 != dropout_keep(a, 11, 100_000)).mean() > 0.3  # a new mask every step
    assert (m1 != dropout_keep(DropoutTrainAttrs(0.25, seed=4, salt=0), 10, 100_000)).mean() > 0.3


def test_dropout_kernel_matches_reference_mask(rng):
    """The generated code draws the very mask the numpy reference draws."""
    from convc.driver import compile_training_graph as compile_graph

    from convc.ir import Graph, TensorKind
    g = Graph("dropout")
    g.add_tensor("x", (1000,), np.float32, TensorKind.INPUT)
    g.add_tensor("step", (1,), np.int64, TensorKind.INPUT)
    a = DropoutTrainAttrs(0.4, seed=123, salt=2)
    g.add_op(OpKind.DROPOUT_TRAIN, a, ["x", "step"], ["y"])
    g.outputs = ["y"]
    x = np.ones(1000, np.float32)
    model = compile_graph(g)
    for step in (0, 1, 2**40):
        y = model.run({"x": x, "step": np.array([step], np.int64)})["y"]
        np.testing.assert_array_equal(y != 0, dropout_keep(a, step, 1000))
        np.testing.assert_allclose(y[y != 0], 1 / 0.6, rtol=1e-6)


# --- broadcasting arithmetic and data movement -------------------------------------------------------------
@pytest.mark.parametrize("b_shape", [(3, 4, 5), (4, 1), (5,), (1, 4, 1), ()])
def test_add_broadcast(rng, b_shape):
    check_gradient(OpKind.ADD, NoAttrs(), [f32(rng, 3, 4, 5), f32(rng, *b_shape)], wrt=(0, 1), rng=rng)


@pytest.mark.parametrize("b_shape", [(3, 4), (4,), (3, 1)])
def test_mul_broadcast(rng, b_shape):
    check_gradient(OpKind.MUL, NoAttrs(), [f32(rng, 3, 4), f32(rng, *b_shape)], wrt=(0, 1), rng=rng)


def test_sum(rng):
    check_gradient(OpKind.SUM, NoAttrs(), [f32(rng, 2, 3), f32(rng, 3), f32(rng, 2, 1)], wrt=(0, 1, 2), rng=rng)


def test_flatten_reshape(rng):
    check_gradient(OpKind.FLATTEN, FlattenAttrs(2), [f32(rng, 2, 3, 4, 5)], rng=rng)
    check_gradient(OpKind.RESHAPE, ReshapeAttrs((6, 20)), [f32(rng, 2, 3, 4, 5)], rng=rng)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat(rng, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for s, extra in zip(shapes, (1, 2, 3)):
        s[axis] = extra
    check_gradient(OpKind.CONCAT, ConcatAttrs(axis), [f32(rng, *s) for s in shapes], wrt=(0, 1, 2), rng=rng)


def test_tensor_read_twice_accumulates(rng):
    """x * x reads x twice: the two contributions are summed (d/dx x^2 = 2x)."""
    x = f32(rng, 3, 4)
    grads = check_gradient(OpKind.MUL, NoAttrs(), [x, x], wrt=(0, 1), rng=rng)
    assert len(grads) == 2


def test_sub_broadcast(rng):
    check_gradient(OpKind.SUB, NoAttrs(), [f32(rng, 3, 4), f32(rng, 4)], wrt=(0, 1), rng=rng)


def test_transpose(rng):
    from convc.ops.shape import TransposeAttrs
    check_gradient(OpKind.TRANSPOSE, TransposeAttrs((2, 0, 1)), [f32(rng, 2, 3, 4)], rng=rng)


def test_split(rng):
    from convc.ops.shape import SplitAttrs
    check_gradient(OpKind.SPLIT, SplitAttrs(1, (1, 3)), [f32(rng, 2, 4, 3)], rng=rng)  # only part 0 is used


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [(0, 1, 1, 0, 2, 1), (1, -1, 0, 0, 2, -1)])  # the second one also crops
def test_pad(rng, pads, mode):
    from convc.ops.shape import PadAttrs
    check_gradient(OpKind.PAD, PadAttrs(pads, mode, 0.5), [f32(rng, 2, 4, 5)], rng=rng)
