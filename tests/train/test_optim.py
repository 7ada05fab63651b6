"""Optimizer updates: the ONNX project's own test cases for its training ops, closed forms for
RMSprop and AdamW, the compiled kernels against the references, and PyTorch's optimizers."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from convc.driver import compile_training_graph as compile_graph

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind, op_def
from convc.ops.optim import AdagradAttrs, AdamAttrs, MomentumAttrs, RmsPropAttrs, SgdAttrs


class Update:
    """One compiled update op on tensors of one shape; ``__call__`` applies it once."""

    def __init__(self, kind: OpKind, attrs: Any, shape: tuple[int, ...]):
        self.kind, self.attrs = kind, attrs
        g = Graph(kind.value)
        for name, shp, dt in [("lr", (1,), np.float32), ("step", (1,), np.int64), ("ok", (1,), np.float32),
                              ("x", shape, np.float32), ("g", shape, np.float32)]:
            g.add_tensor(name, shp, dt, TensorKind.INPUT)
        self.states = [f"s{i}" for i in range(attrs.n_states)]
        for s in self.states:
            g.add_tensor(s, shape, np.float32, TensorKind.INPUT)
        op = g.add_op(kind, attrs, ["lr", "step", "ok", "x", "g"] + self.states, name="update")
        g.outputs = list(op.outputs)
        self.model = compile_graph(g)
        self.outputs = list(op.outputs)

    def __call__(self, lr: float, t: int, x, g, *states, ok: float = 1.0) -> list[np.ndarray]:
        feeds = {"lr": np.array([lr], np.float32), "step": np.array([t], np.int64), "ok": np.array([ok], np.float32),
                 "x": np.asarray(x, np.float32), "g": np.asarray(g, np.float32)}
        feeds |= {s: np.asarray(v, np.float32) for s, v in zip(self.states, states)}
        out = self.model.run(feeds)
        return [out[n] for n in self.outputs]

    def reference(self, lr: float, t: int, x, g, *states, ok: float = 1.0) -> list[np.ndarray]:
        f = np.float32
        return op_def(self.kind).reference(self.attrs, np.array([lr], f), np.array([t], np.int64),
                                           np.array([ok], f), np.asarray(x, f), np.asarray(g, f),
                                           *[np.asarray(s, f) for s in states])


# --- the ONNX test cases (onnx/backend/test/case/node/{adagrad,adam,momentum}.py) ---------------------------
def onnx_cases(monkeypatch, module_name: str, cls_name: str, export: str) -> list[tuple]:
    """Run one of ONNX's export functions, capturing the (node, inputs, outputs, name) it expects."""
    import importlib
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    captured = []
    monkeypatch.setattr(module, "expect", lambda node, inputs, outputs, name, **kw: captured.append(
        (node, inputs, outputs, name)))
    getattr(getattr(module, cls_name), export)()
    return captured


def onnx_attrs(node) -> tuple[OpKind, Any]:
    from onnx import helper
    a = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    if node.op_type == "Adagrad":
        return OpKind.ADAGRAD_UPDATE, AdagradAttrs(a["decay_factor"], a["epsilon"], l2=a["norm_coefficient"])
    if node.op_type == "Adam":
        return OpKind.ADAM_UPDATE, AdamAttrs(a["alpha"], a["beta"], a["epsilon"], l2=a["norm_coefficient"],
                                             norm_coefficient_post=a.get("norm_coefficient_post", 0.0))
    mode = a["mode"].decode() if isinstance(a["mode"], bytes) else a["mode"]
    return OpKind.MOMENTUM_UPDATE, MomentumAttrs(a["alpha"], a["beta"], mode == "nesterov", l2=a["norm_coefficient"])


@pytest.mark.parametrize("module_name,cls_name,export,test_name", [
    ("adagrad", "Adagrad", "export_adagrad", "test_adagrad"),
    ("adagrad", "Adagrad", "export_adagrad_multiple", "test_adagrad_multiple"),
    ("adam", "Adam", "export_adam", "test_adam"),
    ("adam", "Adam", "export_adam_multiple", "test_adam_multiple"),
    ("momentum", "Momentum", "export_momentum", "test_momentum"),
    ("momentum", "Momentum", "export_nesterov_momentum", "test_nesterov_momentum"),
    ("momentum", "Momentum", "export_momentum_multiple", "test_momentum_multiple"),
])
def test_onnx_training_op_cases(monkeypatch, module_name, cls_name, export, test_name):
    ((node, inputs, outputs, name),) = onnx_cases(monkeypatch, module_name, cls_name, export)
    assert name == test_name
    kind, attrs = onnx_attrs(node)
    r, t = float(inputs[0]), int(inputs[1])
    n_states = attrs.n_states
    k = (len(inputs) - 2) // (2 + n_states)  # tensors updated by the node
    xs, gs = inputs[2:2 + k], inputs[2 + k:2 + 2 * k]
    states = [inputs[2 + (2 + s) * k:2 + (3 + s) * k] for s in range(n_states)]
    for j in range(k):
        update = Update(kind, attrs, xs[j].shape)
        want = [outputs[j]] + [outputs[k * (1 + s) + j] for s in range(n_states)]
        for got in (update(r, t, xs[j], gs[j], *[s[j] for s in states]),
                    update.reference(r, t, xs[j], gs[j], *[s[j] for s in states])):
            for a, e in zip(got, want):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7, err_msg=f"{test_name} tensor {j}")


# --- closed forms ---------------------------------------------------------------------------------------------
def test_rmsprop_closed_form():
    """A constant gradient g: v_t = (1 - alpha^t) g^2, so step t moves x by lr g / (sqrt(1 - alpha^t) |g| + eps)."""
    alpha, eps, lr = 0.9, 1e-8, 0.01
    g = np.array([0.5, -2.0, 3.0], np.float32)
    x = np.array([1.0, 1.0, -1.0], np.float32)
    update = Update(OpKind.RMSPROP_UPDATE, RmsPropAttrs(alpha, eps), x.shape)
    v = np.zeros_like(x)
    x0 = x.astype(np.float64)
    for t in range(1, 8):
        x, v = update(lr, t - 1, x, g, v)
    expected = x0 - sum(lr * g / (np.sqrt(1 - alpha ** t) * np.abs(g) + eps) for t in range(1, 8))
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    np.testing.assert_allclose(v, (1 - alpha ** 7) * g.astype(np.float64) ** 2, rtol=1e-5)


def test_adamw_closed_form():
    """A constant gradient makes both bias-corrected moments exact (m^ = g, v^ = g^2), so each step is
    x <- c x - lr g / (|g| + eps) with c = 1 - lr wd: x_t = c^t x_0 - lr s (1 - c^t) / (1 - c)."""
    lr, wd, eps, steps = 0.01, 0.1, 1e-8, 6
    opt = convc.optim.AdamW(lr, betas=(0.9, 0.99), eps=eps, weight_decay=wd)
    kind, attrs = opt.update(0.0, 0.0)
    g = np.array([0.3, -1.5, 2.0, 0.0], np.float32)
    x = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    update = Update(kind, attrs, x.shape)
    m, v = np.zeros_like(x), np.zeros_like(x)
    x0 = x.astype(np.float64)
    for t in range(steps):
        x, m, v = update(lr, t, x, g, m, v)
    c = 1 - lr * wd
    s = g / (np.abs(g) + eps)
    expected = c ** steps * x0 - lr * s * (1 - c ** steps) / (1 - c)
    np.testing.assert_allclose(x, expected, rtol=2e-5, atol=1e-6)


# --- kernels vs references over several steps ------------------------------------------------------------------
CASES = [
    (OpKind.SGD_UPDATE, SgdAttrs()),
    (OpKind.SGD_UPDATE, SgdAttrs(l1=0.01, l2=0.1)),
    (OpKind.MOMENTUM_UPDATE, MomentumAttrs(0.9, 1.0, False)),
    (OpKind.MOMENTUM_UPDATE, MomentumAttrs(0.9, 0.5, True, l2=0.01)),
    (OpKind.ADAGRAD_UPDATE, AdagradAttrs(0.1, 1e-10, l1=0.001)),
    (OpKind.RMSPROP_UPDATE, RmsPropAttrs(0.9, 1e-8)),
    (OpKind.RMSPROP_UPDATE, RmsPropAttrs(0.99, 1e-6, momentum=0.9, centered=True, l2=0.01)),
    (OpKind.ADAM_UPDATE, AdamAttrs(torch=True)),
    (OpKind.ADAM_UPDATE, AdamAttrs(0.8, 0.9, 1e-6, l2=0.01, weight_decay=0.05, torch=True)),
    (OpKind.ADAM_UPDATE, AdamAttrs(0.9, 0.99, 1e-7, l2=0.001, norm_coefficient_post=0.01)),
]


@pytest.mark.parametrize("kind,attrs", CASES, ids=lambda v: v.value if isinstance(v, OpKind) else "")
def test_kernel_matches_reference(rng, kind, attrs):
    shape = (37,)  # not a multiple of any vector width
    update = Update(kind, attrs, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    states = [np.zeros(shape, np.float32) for _ in range(attrs.n_states)]
    ref_x, ref_states = x.copy(), [s.copy() for s in states]
    for t in range(5):
        g = rng.standard_normal(shape).astype(np.float32)
        x, *states = update(0.05, t, x, g, *states)
        ref_x, *ref_states = update.reference(0.05, t, ref_x, g, *ref_states)
        np.testing.assert_allclose(x, ref_x, rtol=1e-5, atol=1e-6)
        for s, r in zip(states, ref_states):
            np.testing.assert_allclose(s, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,attrs", CASES[::3], ids=lambda v: v.value if isinstance(v, OpKind) else "")
def test_not_ok_leaves_state_alone(rng, kind, attrs):
    shape = (9,)
    update = Update(kind, attrs, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    states = [rng.standard_normal(shape).astype(np.float32) ** 2 for _ in range(attrs.n_states)]
    out = update(0.1, 3, x, np.full(shape, np.nan, np.float32), *states, ok=0.0)
    for a, e in zip(out, [x] + states):
        np.testing.assert_array_equal(a, e)


# --- PyTorch's optimizers on the same gradients --------------------------------------------------------------------
TORCH = [
    ("SGD", {"lr": 0.1}, {}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}, {}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, {}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.1}, {}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9}, {}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True, "weight_decay": 0.01}, {}),
    ("Adam", {"lr": 0.01}, {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1}, {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, {}),
]


@pytest.mark.parametrize("name,kwargs,_", TORCH, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(TORCH)])
def test_matches_pytorch(rng, name, kwargs, _):
    torch = pytest.importorskip("torch")
    shape = (23,)
    x0 = rng.standard_normal(shape).astype(np.float32)
    p = torch.nn.Parameter(torch.tensor(x0.copy()))
    topt = getattr(torch.optim, name)([p], **kwargs)
    opt = getattr(convc.optim, name)(**kwargs)
    kind, attrs = opt.update(0.0, 0.0)
    update = Update(kind, attrs, shape)
    x = x0.copy()
    states = opt.initial_state(x, attrs)
    for t in range(6):
        g = rng.standard_normal(shape).astype(np.float32)
        p.grad = torch.tensor(g.copy())
        topt.step()
        x, *states = update(kwargs["lr"], t, x, g, *states)
        np.testing.assert_allclose(x, p.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"{name} step {t}")
