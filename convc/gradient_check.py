"""``convc.gradcheck``: a model's compiled training gradients against finite differences of the
float64 numpy references of the same training graph. (Not named gradcheck.py: importing a submodule
of that name would replace the function ``convc.gradcheck`` on the package with the module.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convc.driver import compile_bound, load_forward
from convc.errors import InputError
from convc.options import resolve_options
from convc.passes.autodiff.training import CLASS_LOSSES, build_training
from convc.runtime import dtype_error

__all__ = ["GradcheckResult", "gradcheck"]


@dataclass
class GradcheckResult:
    """Compiled float32 gradients against central finite differences of the float64 reference."""
    errors: dict[str, float]            # parameter -> max relative error over the checked elements
    checked: dict[str, int]             # parameter -> elements checked
    tolerance: float
    worst: str = ""
    details: list[tuple[str, int, float, float]] = field(default_factory=list)  # (param, index, compiled, fd)

    @property
    def ok(self) -> bool:
        return max(self.errors.values(), default=0.0) <= self.tolerance

    @property
    def worst_error(self) -> float:
        return self.errors.get(self.worst, 0.0)

    def __str__(self) -> str:
        lines = [(f"gradcheck: {'ok' if self.ok else 'FAILED'}; worst parameter {self.worst!r} with relative error "
                  f"{self.worst_error:.2e} (tolerance {self.tolerance:.0e})")]
        for p, e in sorted(self.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {p:40s} {e:.2e}  ({self.checked[p]} elements)")
        return "\n".join(lines)


def gradcheck(model: Any, inputs: np.ndarray, labels: np.ndarray | None = None, *, loss: str = "cross_entropy",
              samples: int = 8, eps: float = 1e-6, tolerance: float = 1e-3, seed: int = 0,
              step: int = 0) -> GradcheckResult:
    """Compare the compiled gradients of ``loss`` w.r.t. every parameter with central finite
    differences computed in float64 by the numpy references of the same training graph.

    ``labels`` default to random classes (cross-entropy) or random targets. Up to ``samples``
    elements per parameter are checked (all of them for small ones), so a check at the batch and
    image size you train costs a few reference runs per sample; the error of an element is
    |compiled - fd| / max(|fd|, |compiled|, 1e-2 * max|fd| of the parameter, 1e-3 * max|fd| of all)."""
    from convc.reference import run_reference
    x = np.asarray(inputs)
    if x.dtype != np.float32:  # the rule of inference and of the Trainer: nothing converted silently
        raise dtype_error("inputs", x.dtype, np.dtype(np.float32))
    x = np.ascontiguousarray(x)
    forward = load_forward(model, x.shape)
    plan = build_training(forward, loss=loss, seed=seed)
    rng = np.random.default_rng(seed)
    out_shape = plan.graph.tensor(plan.logits).shape
    if labels is None:
        labels = rng.integers(0, out_shape[1], x.shape[0]) if loss in CLASS_LOSSES else \
            rng.uniform(0.05, 0.95, out_shape).astype(np.float32)
    labels = np.asarray(labels)
    classes = loss in CLASS_LOSSES
    if classes and labels.dtype.kind not in "iu":
        raise InputError(f"labels have dtype {labels.dtype}, expected integer class indices "
                         "(convert with .astype(np.int64))")
    if not classes and labels.dtype != np.float32:
        raise dtype_error("targets", labels.dtype, np.dtype(np.float32))
    labels = np.ascontiguousarray(labels, dtype=np.int64 if classes else np.float32)
    state = {n: np.array(v, copy=True) for n, v in plan.initial.items()}
    state[plan.step][0] = step
    state[plan.lr] = np.zeros(1, np.float32)
    compiled = compile_bound(plan.plan, state, resolve_options(threads=1)).run({plan.x: x, plan.labels: labels})
    values64 = {n: (v.astype(np.float64) if v.dtype == np.float32 else v) for n, v in state.items()}
    feeds = {plan.x: x.astype(np.float64), plan.labels: labels if classes else
             labels.astype(np.float64), **values64}

    from convc.passes.dce import eliminate_dead_code
    loss_graph = plan.graph.copy()  # the forward pass and the loss: the backward pass is not needed
    loss_graph.outputs = [plan.loss]
    eliminate_dead_code(loss_graph)

    def central(flat: np.ndarray, i: int, h: float) -> float:
        old = flat[i]
        flat[i] = old + h
        up = float(run_reference(loss_graph, feeds)[plan.loss][0])
        flat[i] = old - h
        down = float(run_reference(loss_graph, feeds)[plan.loss][0])
        flat[i] = old
        return (up - down) / (2 * h)

    def derivative(flat: np.ndarray, i: int, magnitude: float) -> float:
        """A central difference whose step shrinks (eps, eps/8, eps/64) until two agree: a ReLU
        net's loss has kinks, and a step that crosses some biases the difference in proportion
        to the step (a ResNet at batch 16, 32x32: 3e-3 off at 1e-6, 3e-7 at 1.25e-7)."""
        h, prev = eps, central(flat, i, eps)
        for _ in range(2):
            h /= 8
            cur = central(flat, i, h)
            if abs(cur - prev) <= 0.1 * tolerance * max(abs(cur), magnitude):
                return cur
            prev = cur
        return prev

    fd_all: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for p in plan.params:
        g = compiled[plan.grads[p]].reshape(-1).astype(np.float64)
        flat = feeds[p].reshape(-1)
        idx = np.arange(flat.size) if flat.size <= samples else rng.choice(flat.size, samples, replace=False)
        magnitude = max(1e-2 * float(np.abs(g).max(initial=0.0)), 1e-9)
        fds = [derivative(flat, i, max(magnitude, abs(g[i]))) for i in idx]
        fd_all[p] = (idx, g[idx], np.array(fds))
    # near-zero gradients (a bias followed by BatchNorm has none) are measured against the model's scale
    overall = max((np.abs(fd).max(initial=0.0) for _, _, fd in fd_all.values()), default=0.0)
    errors, checked, details = {}, {}, []
    for p, (idx, g, fds) in fd_all.items():
        scale = max(1e-2 * np.abs(fds).max(initial=0.0), 1e-3 * overall, 1e-9)
        rel = np.abs(g - fds) / np.maximum(np.maximum(np.abs(fds), np.abs(g)), scale)
        errors[p] = float(rel.max(initial=0.0))
        checked[p] = len(idx)
        details += [(p, int(i), float(a), float(fd)) for i, a, fd in zip(idx, g, fds)]
    worst = max(errors, key=errors.get, default="")
    return GradcheckResult(errors, checked, tolerance, worst, details)
