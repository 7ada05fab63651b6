"""Losses: values against closed forms, gradients against finite differences, kernels against references."""
from __future__ import annotations

import numpy as np
import pytest
from convc.driver import compile_training_graph as compile_graph

from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def
from convc.ops.loss import LossAttrs
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


# --- the options of convc.Loss: PyTorch's losses, the kernels, the rows a padded batch counts ----------
CE, MSE, BCE = OpKind.SOFTMAX_CROSS_ENTROPY, OpKind.MSE_LOSS, OpKind.BCE_LOSS
GRAD = {CE: OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, MSE: OpKind.MSE_LOSS_GRAD, BCE: OpKind.BCE_LOSS_GRAD}
WEIGHTS = (0.5, 2.0, 1.0, 0.25, 3.0)  # one per class of the cases (5 classes)
# name -> (kind, attrs, targets: "hard" class indices with some ignored (-1), "soft" probabilities, "float")
OPTION_CASES = {
    "ce_label_smoothing": (CE, LossAttrs("logits", label_smoothing=0.1), "hard"),
    "ce_weights_ignore": (CE, LossAttrs("logits", weights=WEIGHTS), "hard"),
    "ce_all_options": (CE, LossAttrs("logits", label_smoothing=0.2, weights=WEIGHTS), "hard"),
    "ce_soft_targets": (CE, LossAttrs("logits", label_smoothing=0.05, weights=WEIGHTS), "soft"),
    "nll": (CE, LossAttrs("log_probs", weights=WEIGHTS), "hard"),
    "l1": (MSE, LossAttrs("l1"), "float"),
    "huber": (MSE, LossAttrs("huber", delta=0.5), "float"),
    "smooth_l1": (MSE, LossAttrs("smooth_l1", delta=0.5), "float"),
    "bce_with_logits": (BCE, LossAttrs("logits"), "float"),
}


def option_case(rng, name: str, n: int = 8, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    kind, attrs, targets = OPTION_CASES[name]
    x = rng.standard_normal((n, c)) * 2
    if attrs.form == "log_probs":
        x = x - np.log(np.exp(x).sum(1, keepdims=True))
    if targets == "hard":
        y = rng.integers(0, c, n)
        y[[1, 4]] = -1  # ignored (convc.Trainer maps ignore_index here)
        return x, y
    if targets == "soft":
        p = rng.uniform(0, 1, (n, c))
        return x, p / p.sum(1, keepdims=True)
    return x, (rng.uniform(0, 1, (n, c)) if kind is BCE else rng.standard_normal((n, c)))


def option_loss(name: str, x: np.ndarray, y: np.ndarray, rows: int | None = None) -> float:
    kind, attrs, _ = OPTION_CASES[name]
    r = None if rows is None else np.array([rows], np.int64)
    return float(op_def(kind).reference(attrs, x, y, r)[0][0])


def option_grad(name: str, x: np.ndarray, y: np.ndarray, rows: int | None = None) -> np.ndarray:
    kind, attrs, _ = OPTION_CASES[name]
    r = None if rows is None else np.array([rows], np.int64)
    saved = op_def(kind).reference(attrs, x, y, r)[1] if kind is CE and attrs.form == "logits" else x
    return op_def(GRAD[kind]).reference(attrs, saved, y, r)[0]


def torch_loss(name: str, x, y):
    import torch.nn.functional as F
    import torch
    kind, attrs, targets = OPTION_CASES[name]
    w = torch.tensor(attrs.weights, dtype=torch.float64) if attrs.weights else None
    t = torch.tensor(y)
    if kind is CE and attrs.form == "log_probs":
        return F.nll_loss(x, t, weight=w, ignore_index=-1)
    if kind is CE:
        kw = {} if targets == "soft" else {"ignore_index": -1}
        return F.cross_entropy(x, t, weight=w, label_smoothing=attrs.label_smoothing, **kw)
    if kind is BCE:
        return F.binary_cross_entropy_with_logits(x, t)
    if attrs.form == "l1":
        return F.l1_loss(x, t)
    if attrs.form == "huber":
        return F.huber_loss(x, t, delta=attrs.delta)
    return F.smooth_l1_loss(x, t, beta=attrs.delta)


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_loss_options_match_pytorch(rng, name):
    """Value and gradient of each loss's float64 reference against PyTorch's loss and autograd."""
    torch = pytest.importorskip("torch")
    x, y = option_case(rng, name)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch_loss(name, tx, y)
    expected.backward()
    assert option_loss(name, x, y) == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(option_grad(name, x, y), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_loss_options_gradient_finite_differences(rng, name):
    """The gradient references against central differences of the loss references, also with a
    rows count (the padded rows get no gradient, the mean is over the others)."""
    x, y = option_case(rng, name)
    for rows in (None, 5):
        grad = option_grad(name, x, y, rows)
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            q = x.copy()
            q[idx] += 1e-6
            up = option_loss(name, q, y, rows)
            q[idx] -= 2e-6
            fd[idx] = (up - option_loss(name, q, y, rows)) / 2e-6
        assert rel_error(grad, fd) < 1e-5
    np.testing.assert_array_equal(option_grad(name, x, y, 5)[5:], 0.0)
    assert option_loss(name, x, y, 5) == pytest.approx(option_loss(name, x[:5], y[:5]), rel=1e-12)


def test_loss_option_kernels(rng):
    """Every option case's loss and gradient kernels, in one compiled graph (batch 16; 5 classes with
    class weights, else 13), against the references; each case with every row and with 11 counted."""
    g = Graph("losses")
    feeds, expected = {}, {}
    g.add_tensor("rows", (1,), np.int64, TensorKind.INPUT)
    feeds["rows"] = np.array([11], np.int64)
    for name, (kind, attrs, targets) in OPTION_CASES.items():
        x, y = option_case(rng, name, n=16, c=5 if attrs.weights else 13)
        x32 = x.astype(np.float32)
        y_in = y if targets == "hard" else y.astype(np.float32)
        feeds[f"{name}.x"], feeds[f"{name}.y"] = x32, y_in
        g.add_tensor(f"{name}.x", x.shape, np.float32, TensorKind.INPUT)
        g.add_tensor(f"{name}.y", y_in.shape, y_in.dtype, TensorKind.INPUT)
        for rows in (None, 11):
            ins = [f"{name}.x", f"{name}.y"] + ([] if rows is None else ["rows"])
            tag = f"{name}.{rows}"
            outs = g.add_op(kind, attrs, ins, name=f"{tag}.loss").outputs
            saved = outs[1] if kind is CE and attrs.form == "logits" else f"{name}.x"
            dx = g.add_op(GRAD[kind], attrs, [saved] + ins[1:], name=f"{tag}.grad").outputs[0]
            g.outputs = list(g.outputs) + [outs[0], dx]
            x64 = x32.astype(np.float64)
            expected[outs[0]] = option_loss(name, x64, y_in, rows)
            expected[dx] = option_grad(name, x64, y_in, rows)
    got = compile_graph(g).run(feeds)
    for out, want in expected.items():
        if np.ndim(want) == 0:
            assert abs(got[out][0] - want) <= 1e-5 * max(1.0, abs(want)), out
        else:
            assert rel_error(got[out], want) < 1e-4, out
