"""Differential testing: the compiled code against convc's numpy reference of the same graph.

For inference, the graph is the model as imported (before any pass), so the comparison covers
every pass (folding, fusion, layout, im2col), the memory plan and every kernel. For training, the
graph is the planned training step (forward in training mode, loss, backward, update), run by the
native step and by the reference, so the comparison covers code generation, the arena plan with
its in-place updates, and the kernels; the gradient rules themselves are checked against finite
differences elsewhere (tests/train).

Tolerance. Each tensor's error is max |compiled - ref64| against the float64 reference, relative
to the tensor's largest value. float32 costs some error, and how much depends on the net, the
input and the tensor: a gradient that is a small difference of large sums (BatchNorm's, a conv's
weight gradient summed over batch x pixels) loses digits to cancellation. Two measurements of it:

- ``ref32``: numpy's float32 run of the same graph (its reductions sum in float64 or pairwise,
  so it measures the rounding of the tensors between ops, not of long float32 sums);
- the sensitivity: the compiled code run again on the input with every element moved by one
  float32 ulp. A float32 rounding anywhere is such a perturbation of some value, so how far the
  outputs move is the scale of float32 error for this very computation, cancellation included.

A tensor passes when its error is at most ``FACTOR`` times the larger of the two, or below
``FLOOR`` (32 float32 ulps of its largest value: two nets that agree to that are the same net).
Measured margins on the zoo are a few times below the factor; a real bug is orders of magnitude
above: the wrong ResNet gradients this harness was built for were off by 2.5e-3 to 1.5e-2.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from convc.passes.autodiff.training import build_training, update_targets

import convc
from convc.driver import compile_bound
from convc.ops import OpKind
from convc.options import resolve_options
from convc.reference import run_reference

FACTOR = 16.0
U = 2.0 ** -24  # float32 unit roundoff
FLOOR = 32 * U  # 1.9e-6
GROUP_FLOOR = 1e-3


@dataclass
class Comparison:
    """Per tensor: the largest error of the compiled code and of numpy's float32 run against the
    float64 reference, and the tensor's largest float64 magnitude.

    Errors are relative to that magnitude, but never to less than ``GROUP_FLOOR`` of the largest
    tensor of its group (gradients, weight changes, each kind of optimizer state): some tensors
    are zero in exact arithmetic (the bias of a conv followed by BatchNorm, or anything whose
    gradient is a sum over a BatchNorm's normalized output) and hold only rounding residue."""
    case: str
    errors: dict[str, tuple[float, float, float, str]] = field(default_factory=dict)
    flipped: list[str] = field(default_factory=list)  # ReLU elements whose other branch the comparison took

    def add(self, name: str, compiled: np.ndarray, ref64: np.ndarray, ref32: np.ndarray, perturbed: np.ndarray,
            group: str = "", resolution: float = 0.0) -> None:
        """``perturbed``: the compiled result on the input moved by one ulp. ``resolution``: the
        smallest change the compared tensor can show (a float32 state's change is known to one ulp
        of the stored value: a change far below it, such as the update of a conv bias that BatchNorm
        makes zero in exact arithmetic, rounds to 0 or to one ulp depending on its residue)."""
        if compiled.shape != ref64.shape:
            self.errors[name] = (np.inf, 0.0, 1.0, group)
            return
        if not ref64.size:
            return
        c = compiled.astype(np.float64)
        self.errors[name] = (float(np.max(np.abs(c - ref64))),
                             max(float(np.max(np.abs(ref32.astype(np.float64) - ref64))),
                                 float(np.max(np.abs(perturbed.astype(np.float64) - c))), resolution),
                             float(np.max(np.abs(ref64))), group)

    def relative(self) -> dict[str, tuple[float, float]]:
        """tensor -> (compiled error, float32 error scale), relative to the tensor's scale."""
        top: dict[str, float] = {}
        for _, _, size, group in self.errors.values():
            top[group] = max(top.get(group, 0.0), size)
        out = {}
        for name, (err, err32, size, group) in self.errors.items():
            scale = max(size, GROUP_FLOOR * top[group]) or 1.0
            out[name] = (err / scale, err32 / scale)
        return out

    def failures(self) -> list[str]:
        bad = []
        for name, (err, err32) in self.relative().items():
            allowed = max(FACTOR * err32, FLOOR)
            if not err <= allowed:  # NaN fails too
                bad.append(f"{name}: compiled error {err:.2e}, float32 error scale {err32:.2e} (allowed {allowed:.2e})")
        return bad

    def check(self) -> None:
        bad = self.failures()
        assert not bad, f"{self.case}: {len(bad)} of {len(self.errors)} tensors differ:\n  " + "\n  ".join(bad)

    @property
    def worst(self) -> float:
        return max((e for e, _ in self.relative().values()), default=0.0)


def _x(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def one_ulp(x: np.ndarray, seed: int) -> np.ndarray:
    """``x`` with every element moved one float32 ulp up or down at random."""
    up = np.random.default_rng(seed + 7).random(x.shape) < 0.5
    return np.where(up, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))).astype(np.float32)


def _graph(model, shape: tuple[int, ...]):
    """The unoptimized graph of ``model`` (a convc.nn module or an ONNX model) at ``shape``."""
    from convc.driver import load_forward
    return load_forward(model, shape)


def inference(model, shape: tuple[int, ...], *, threads: int, seed: int = 0, case: str = "") -> Comparison:
    """Compile ``model`` (a convc.nn module or an ONNX model with one input) for ``shape`` and
    compare every output with the numpy reference of the imported, unoptimized graph."""
    graph = _graph(model, shape)
    if hasattr(model, "to_graph"):
        compiled = convc.compile(model, input_shape=shape, threads=threads, cache=False)
    else:
        compiled = convc.compile(model, batch=shape[0], threads=threads, cache=False)
    x = _x(shape, seed)
    got = compiled.run({graph.inputs[0]: x})
    moved = compiled.run({graph.inputs[0]: one_ulp(x, seed)})
    ref64 = run_reference(graph, {graph.inputs[0]: x.astype(np.float64)})
    ref32 = run_reference(graph, {graph.inputs[0]: x})
    out = Comparison(case or f"inference {graph.name} {shape} threads={threads}")
    for name in graph.outputs:
        out.add(name, got[name], ref64[name], ref32[name], moved[name])
    return out


def _labels(loss: str, out_shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if loss == "cross_entropy":
        return rng.integers(0, out_shape[1], out_shape[0])
    return rng.standard_normal(out_shape).astype(np.float32)


def _feeds(step, x: np.ndarray, labels: np.ndarray, state: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    feeds = {n: (v.astype(dtype) if v.dtype == np.float32 else v.copy()) for n, v in state.items()}
    feeds[step.x] = x.astype(dtype)
    feeds[step.labels] = labels if labels.dtype.kind in "iu" else labels.astype(dtype)
    return feeds


KINK_ULPS = 16  # a ReLU input this close to 0 (in float32 ulps of its tensor's largest value) may round across it
MAX_KINKS = 8   # candidates tried (2**8 combinations, each a sum of precomputed differences)


def near_kinks(g, ref64: dict[str, np.ndarray]) -> list[tuple[str, tuple, float]]:
    """(ReLU output, element, flipped value) of the ReLU inputs closest to 0, within KINK_ULPS."""
    found = []
    for op in g.ops():
        if op.kind is not OpKind.RELU:
            continue
        x = ref64[op.inputs[0]]
        scale = float(np.max(np.abs(x))) if x.size else 0.0
        close = np.flatnonzero(np.abs(x) <= KINK_ULPS * U * scale)
        for i in close:
            index = np.unravel_index(i, x.shape)
            # the other branch: a ReLU output of 0 passes no gradient; a positive one passes it all
            found.append((abs(float(x[index])) / scale, op.outputs[0], index, 1e-30 if x[index] <= 0 else 0.0))
    return [(name, index, value) for _, name, index, value in sorted(found)[:MAX_KINKS]]


def training(model, shape: tuple[int, ...], *, loss: str, threads: int, optimizer=None, seed: int = 0,
             case: str = "") -> Comparison:
    """One compiled training step of ``model`` against the reference of the same step.

    Without ``optimizer``: the loss and every parameter's gradient. With one: the loss and the
    change of every updated tensor (parameters, optimizer state, BatchNorm running statistics,
    the step counter), compared as changes so that a wrong update is not hidden by the weights.

    A ReLU input within a few float32 ulps of 0 may land on the other side in float32: the
    compiled step then takes the other branch there (a valid float32 result), and BatchNorm's
    backward carries that one element into whole gradients (5e-3 of a ResNet's first-stage
    gradients at batch 16, 32x32). When the comparison fails, the reference is re-run with each
    such ReLU (at most ``MAX_KINKS``) taking the other branch, and the step passes if some set of
    them explains the difference; ``Comparison.flipped`` names them."""
    forward = _graph(model, shape)
    step = build_training(forward, loss=loss, optimizer=optimizer, seed=seed)
    g = step.plan.graph
    x = _x(shape, seed)
    labels = _labels(loss, g.tensor(step.logits).shape, seed)
    state = {n: np.array(v, copy=True) for n, v in step.initial.items()}
    state[step.lr] = np.array([0.05 if optimizer is not None else 0.0], np.float32)
    before = {n: v.copy() for n, v in state.items()}
    feeds64 = _feeds(step, x, labels, state, np.float64)
    ref64 = run_reference(g, feeds64, keep_all=True)
    ref32 = run_reference(g, _feeds(step, x, labels, state, np.float32), keep_all=True)
    native = compile_bound(step.plan, state, resolve_options(threads=threads, cache=False))
    labels = labels.astype(np.int64) if loss == "cross_entropy" else labels
    moved = {n: v.copy() for n, v in native.run({step.x: one_ulp(x, seed), step.labels: labels}).items()}
    moved_state = {n: v.copy() for n, v in state.items()}
    for n, v in before.items():  # the step updated the state in place: start again from the same state
        state[n][...] = v
    got = native.run({step.x: x, step.labels: labels})
    compared = [(name, got[name], name, "loss" if name == step.loss else "gradient", None) for name in g.outputs]
    for op in g.ops():
        for k, (new, target) in enumerate(update_targets(op).items()):  # written in place over the state
            compared.append((f"{target} (updated)", state[target], new, f"{op.kind.value}[{k}]", target))

    def compare(reference: dict[str, np.ndarray]) -> Comparison:
        out = Comparison(case or f"training {g.name} {shape} threads={threads} {type(optimizer).__name__}")
        for label, value, ref_name, group, target in compared:
            start = before[target].astype(np.float64) if target else 0.0
            other = moved_state[target] if target else moved[ref_name]
            stored = float(np.max(np.spacing(np.abs(value.astype(np.float32))))) if target and value.size else 0.0
            out.add(label, value.astype(np.float64) - start, reference[ref_name] - start,
                    ref32[ref_name].astype(np.float64) - start, other.astype(np.float64) - start, group, stored)
        return out

    result = compare(ref64)
    if result.failures():
        kinks = near_kinks(g, ref64)
        names = [ref_name for _, _, ref_name, _, _ in compared]
        deltas = []
        for j, (t, i, v) in enumerate(kinks):  # closest to 0 first; each new one with every set of the earlier
            deltas.append({n: run_reference(g, feeds64, keep_all=True, overrides={t: [(i, v)]})[n] - ref64[n] for n in names})
            for r in range(j + 1):
                for others in itertools.combinations(range(j), r):
                    flips = others + (j,)
                    candidate = compare({n: ref64[n] + sum(deltas[f][n] for f in flips) for n in names})
                    if not candidate.failures():
                        candidate.flipped = [f"{kinks[f][0]}{[int(k) for k in kinks[f][1]]}" for f in flips]
                        return candidate
    return result
