"""Losses: values against closed forms, gradients against finite differences, kernels against references."""
from __future__ import annotations

import numpy as np
import pytest
from convc.driver import compile_training_graph as compile_graph

from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def
from train.grad_helpers import rel_error

CASES = {
    "cross_entropy": (OpKind.SOFTMAX_CROSS_ENTROPY, OpKind.SOFTMAX_CROSS_ENTROPY_GRAD),
    "mse": (OpKind.MSE_LOSS, OpKind.MSE_LOSS_GRAD),
    "bce": (OpKind.BCE_LOSS, OpKind.BCE_LOSS_GRAD),
}


def make_case(rng, loss: str, n: int = 6, c: int = 5):
    if loss == "cross_entropy":
        return rng.standard_normal((n, c)) * 3, rng.integers(0, c, n)
    if loss == "mse":
        return rng.standard_normal((n, c)), rng.standard_normal((n, c))
    return rng.uniform(0.05, 0.95, (n, c)), rng.uniform(0, 1, (n, c))


def loss_value(loss: str, p: np.ndarray, t: np.ndarray) -> float:
    return float(op_def(CASES[loss][0]).reference(NoAttrs(), p, t)[0][0])


def saved(loss: str, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """What the gradient op reads: the softmax for cross-entropy, the prediction otherwise."""
    return op_def(CASES[loss][0]).reference(NoAttrs(), p, t)[1] if loss == "cross_entropy" else p


def test_closed_forms():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = np.array([2, 0])
    expected = np.mean([-np.log(np.exp(3) / np.exp([1, 2, 3]).sum()), np.log(3)])
    assert abs(loss_value("cross_entropy", logits, labels) - expected) < 1e-12
    assert abs(loss_value("mse", np.array([[1.0, 2.0]]), np.array([[0.0, 4.0]])) - 2.5) < 1e-12
    bce = -(0.3 * np.log(0.8) + 0.7 * np.log(0.2))
    assert abs(loss_value("bce", np.array([[0.8]]), np.array([[0.3]])) - bce) < 1e-12
    assert loss_value("bce", np.array([[0.0]]), np.array([[1.0]])) == 100.0  # log clamped at -100 like PyTorch


@pytest.mark.parametrize("loss", list(CASES))
def test_gradient_finite_differences(rng, loss):
    p, t = make_case(rng, loss)
    (grad,) = op_def(CASES[loss][1]).reference(NoAttrs(), saved(loss, p, t), t)
    fd = np.zeros_like(p)
    for idx in np.ndindex(p.shape):
        q = p.copy()
        q[idx] += 1e-6
        up = loss_value(loss, q, t)
        q[idx] -= 2e-6
        fd[idx] = (up - loss_value(loss, q, t)) / 2e-6
    assert rel_error(grad, fd) < 1e-5


@pytest.mark.parametrize("loss", list(CASES))
def test_kernels(rng, loss):
    p, t = make_case(rng, loss, n=9, c=13)
    p32 = p.astype(np.float32)
    t_in = t if loss == "cross_entropy" else t.astype(np.float32)
    fwd, grad = CASES[loss]
    g = Graph(loss)
    g.add_tensor("p", p.shape, np.float32, TensorKind.INPUT)
    g.add_tensor("t", t.shape, t_in.dtype, TensorKind.INPUT)
    outs = g.add_op(fwd, NoAttrs(), ["p", "t"], name="loss").outputs
    g.add_op(grad, NoAttrs(), [outs[1] if loss == "cross_entropy" else "p", "t"], ["dp"], name="grad")
    g.outputs = list(outs) + ["dp"]
    got = compile_graph(g).run({"p": p32, "t": t_in})
    ref = op_def(fwd).reference(NoAttrs(), p32.astype(np.float64), t_in)
    assert abs(got[outs[0]][0] - ref[0][0]) <= 1e-5 * max(1.0, abs(ref[0][0]))
    (dref,) = op_def(grad).reference(NoAttrs(), saved(loss, p32.astype(np.float64), t_in), t_in)
    assert rel_error(got["dp"], dref) < 1e-4
    if loss == "cross_entropy":
        assert rel_error(got[outs[1]], ref[1]) < 1e-5
