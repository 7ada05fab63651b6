"""``convc check MODEL.onnx``: can convc compile this model, and where do its numbers first differ?

1. Import the model. If some nodes cannot be compiled, list every one of them (node, op, opset,
   reason: unsupported ops and attribute values alike) and stop.
2. Otherwise run convc and an oracle (onnxruntime when installed, else ``onnx.reference``) on
   seeded random inputs, with every intermediate float tensor of the ONNX graph made a graph output
   in both, and walk the tensors in execution order: the first whose error exceeds the tolerance
   names the layer where convc goes wrong (every earlier tensor matched). The error of a tensor is
   ``max |convc - oracle| / max(1, max |oracle|)``, so values near zero do not blow it up.
3. The graph outputs of the normally compiled model (with its fusions, which making every tensor an
   output prevents) are compared too. If only they differ, the prefix of the graph ending at each
   tensor is compiled normally and bisected for the first tensor that differs.

``precision="bf16"`` (``convc check --precision bf16``) measures what bf16 costs instead: convc
compiled with ``precision="bf16"`` against float32 (the oracle, which agrees with convc's float32 to
~1e-6), each tensor's deviation taken relative to its own scale, ``max |bf16 - float32| / max
|float32|`` (bf16's error grows with the values, so clamping the scale at 1 would hide it in small
logits). It reports the deviation of every graph output, the top-1 agreement of outputs shaped like
class scores, and the first layer, in execution order, whose deviation exceeds the tolerance
(default ``BF16_TOLERANCE``): where the rounding error grows past what the model can take.

Testing hook: ``perturb="node name"`` (``--perturb`` or ``CONVC_CHECK_PERTURB``) adds 1 to that
node's first output in the model convc compiles, a wrong layer on purpose.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convc.errors import ConvcError, UnsupportedOpError

PERTURB_ENV = "CONVC_CHECK_PERTURB"
DEFAULT_TOLERANCE = 1e-4
# bf16 keeps 8 significant bits: one conv's output moves by ~3e-3 relative (KERNELS-precision.md),
# a ResNet's logits by ~5e-3; the target for logits is 1e-2
BF16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class TensorCheck:
    tensor: str
    node: str      # the ONNX node producing it
    op_type: str
    shape: tuple[int, ...]
    error: float   # max |convc - oracle| / max(1, max |oracle|); inf when NaN/inf positions differ

    def line(self) -> str:
        return f"{self.tensor!r} from node {self.node!r} ({self.op_type}), shape {list(self.shape)}: error {self.error:.3g}"


@dataclass
class CheckReport:
    model: str
    unsupported: list[tuple[str, str, int, str]] = field(default_factory=list)  # (node, op, opset, reason)
    oracle: str = ""
    tolerance: float = DEFAULT_TOLERANCE
    seed: int | None = 0  # None: the caller gave the inputs
    layers: list[TensorCheck] = field(default_factory=list)  # intermediate tensors, in execution order
    outputs: list[TensorCheck] = field(default_factory=list)  # graph outputs of the normally compiled model
    first_bad: TensorCheck | None = None
    found_by_bisection: bool = False
    precision: str = "float32"
    top1: dict[str, tuple[int, int]] = field(default_factory=dict)  # bf16: output -> (samples agreeing, samples)

    @property
    def compiles(self) -> bool:
        return not self.unsupported

    @property
    def ok(self) -> bool:
        """Every output within tolerance and (float32: a fault of convc's otherwise) every layer too;
        in bf16 a layer over tolerance is where the error grows, reported but not a failure by itself."""
        outputs_ok = all(o.error <= self.tolerance for o in self.outputs)
        if self.precision != "float32":
            return self.compiles and outputs_ok
        return self.compiles and self.first_bad is None and outputs_ok

    def render(self) -> str:
        if self.unsupported:
            lines = [f"{self.model}: convc cannot compile {len(self.unsupported)} node(s):"]
            lines += [f"  node {name!r}: {op} (opset {opset}): {why}" for name, op, opset, why in self.unsupported]
            return "\n".join(lines)
        if self.precision != "float32":
            return self._render_precision()
        lines = [(f"{self.model}: compiles; compared with {self.oracle} on {self.inputs}, "
                  f"tolerance {self.tolerance:g} on max |convc - oracle| / max(1, max |oracle|)")]
        worst = max((t.error for t in self.layers), default=0.0)
        if self.first_bad is None:
            lines.append(f"  all {len(self.layers)} intermediate tensors within tolerance (largest error {worst:.3g})")
        else:
            how = " (bisecting prefixes of the optimized model)" if self.found_by_bisection else ""
            lines.append(f"  first tensor over tolerance{how}: {self.first_bad.line()}")
            names = [t.tensor for t in self.layers]
            earlier = self.layers[:names.index(self.first_bad.tensor)] if self.first_bad.tensor in names else []
            lines.append(f"  the {len(earlier)} tensor(s) computed before it match"
                         + (f" (largest error {max(t.error for t in earlier):.3g})" if earlier else ""))
        for o in self.outputs:
            mark = "ok" if o.error <= self.tolerance else "DIFFERS"
            lines.append(f"  graph output {o.tensor!r}: error {o.error:.3g} {mark}")
        return "\n".join(lines)


    def _render_precision(self) -> str:
        p = self.precision
        lines = [(f"{self.model}: convc in {p} against float32 ({self.oracle}) on {self.inputs}; deviation = "
                  f"max |{p} - float32| / max |float32| per tensor, tolerance {self.tolerance:g}")]
        for o in self.outputs:
            mark = "ok" if o.error <= self.tolerance else "OVER TOLERANCE"
            top1 = self.top1.get(o.tensor)
            agree = f", top-1 agrees on {top1[0]}/{top1[1]} sample(s)" if top1 else ""
            lines.append(f"  output {o.tensor!r}: deviation {o.error:.3g}{agree} {mark}")
        worst = max(self.layers, key=lambda t: t.error, default=None)
        if self.first_bad is None:
            lines.append(f"  no layer's deviation exceeds {self.tolerance:g} ({len(self.layers)} tensors"
                         + (f"; largest {worst.error:.3g} at {worst.tensor!r})" if worst else ")"))
        else:
            lines.append(f"  first layer whose deviation exceeds {self.tolerance:g}: {self.first_bad.line()}")
        if self.layers:
            lines.append(f"  deviation at the first layer {self.layers[0].error:.3g}, the largest "
                         f"{worst.error:.3g} ({worst.tensor!r}), the last {self.layers[-1].error:.3g}")
        return "\n".join(lines)

    @property
    def inputs(self) -> str:
        return "the given inputs" if self.seed is None else f"random normal inputs (seed {self.seed})"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (inf where NaN/inf positions differ; 0 for two zero tensors)."""
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0))
    return tensor_error(a / scale, e / scale) if scale > 0 else tensor_error(a, e)


def top1_agreement(actual: np.ndarray, expected: np.ndarray) -> tuple[int, int] | None:
    """(samples whose argmax agrees, samples) for an output shaped like class scores: (N, C), or one
    axis longer than 1 after the batch such as (N, 1000, 1, 1); None for other shapes."""
    e = np.asarray(expected)
    classes = [d for d in e.shape[1:] if d > 1]
    if e.ndim < 2 or len(classes) != 1 or np.shape(actual) != e.shape:
        return None
    a, e = np.asarray(actual).reshape(e.shape[0], -1), e.reshape(e.shape[0], -1)
    return int((a.argmax(axis=1) == e.argmax(axis=1)).sum()), int(e.shape[0])


def tensor_error(actual: np.ndarray, expected: np.ndarray) -> float:
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return float("inf")
    bad_a, bad_e = ~np.isfinite(a), ~np.isfinite(e)
    if not np.array_equal(bad_a, bad_e) or not np.array_equal(a[bad_e], e[bad_e], equal_nan=True):
        return float("inf")
    if not (~bad_e).any():
        return 0.0
    a, e = a[~bad_e], e[~bad_e]
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


# --- building the variants -------------------------------------------------------------------------
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def float_tensors(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Every float node output in execution (file) order: tensor -> (producing node name, op type)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    out = {}
    for i, node in enumerate(model.graph.node):
        for name in node.output:
            if name and types.get(name) == TensorProto.FLOAT:
                out[name] = (node.name or f"{node.op_type}_{i}", node.op_type)
    return out


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with ``names`` (float tensors) as its graph outputs, in that order."""
    m = _copy(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return m


def perturbed(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """The model with 1 added to the first output of node ``node_name`` (a wrong layer, on purpose)."""
    m = _copy(model)
    for i, node in enumerate(m.graph.node):
        if (node.name or f"{node.op_type}_{i}") == node_name:
            target = node.output[0]
            raw = f"{target}__convc_check_unperturbed"
            node.output[0] = raw
            one = f"{target}__convc_check_one"
            m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
            m.graph.node.insert(i + 1, helper.make_node("Add", [raw, one], [target], name=f"{node_name}__perturb"))
            return m
    raise ValueError(f"perturb={node_name!r}: the model has no node of that name")


def random_feeds(model: onnx.ModelProto, batch: int | None, seed: int,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        shape = list((input_shapes or {}).get(vi.name) or
                     [d.dim_value if d.HasField("dim_value") else (batch or 1) for d in dims])
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# --- running ---------------------------------------------------------------------------------------
def oracle_name() -> str:
    try:
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        return f"onnx.reference (onnx {onnx.__version__})"


def run_oracle(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return dict(zip(names, session.run(names, feeds)))
    except Exception as e:  # noqa: BLE001 -- onnxruntime's own exception types: the check cannot go on
        raise ConvcError(f"{oracle_name()} cannot run the model, so there is nothing to compare convc with: "
                         f"{str(e).strip()[:500]}") from None


def run_convc(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int | None,
              precision: str = "float32", input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    import convc
    compiled = convc.compile(model, batch=batch, precision=precision, input_shapes=input_shapes)
    return compiled.run({s.name: feeds[s.name] for s in compiled.inputs})


def _checks(names: list[str], producers: dict[str, tuple[str, str]], ours: dict, theirs: dict,
            error=tensor_error) -> list[TensorCheck]:
    return [TensorCheck(n, *producers.get(n, ("(graph input)", "-")), tuple(np.shape(theirs[n])),
                        error(ours[n], theirs[n])) for n in names if n in ours and n in theirs]


def check_model(model: onnx.ModelProto | str | os.PathLike, *, batch: int | None = None, seed: int = 0,
                tolerance: float | None = None, perturb: str | None = None, precision: str = "float32",
                inputs: dict[str, np.ndarray] | None = None, input_shapes: Any = None) -> CheckReport:
    """Check ``model`` (see the module docstring); ``perturb`` names a node whose output convc gets wrong.
    ``precision="bf16"`` measures bf16's deviation from float32 instead; ``tolerance`` defaults to
    ``DEFAULT_TOLERANCE`` (float32) or ``BF16_TOLERANCE``. ``inputs`` replaces the random inputs
    (each graph input by name; those not given stay random). ``input_shapes`` fixes symbolic input
    dimensions as in ``convc.compile``; an input given in ``inputs`` whose declared shape is
    symbolic is checked at the given array's shape."""
    from convc.frontend.onnx import import_onnx
    from convc.options import resolve_options
    precision = resolve_options(threads=1, precision=precision).precision  # an InputError for "fp16" or 3
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE if precision == "float32" else BF16_TOLERANCE
    name = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    if not isinstance(model, onnx.ModelProto):
        from convc.frontend.onnx.reader import read_model
        model = read_model(model)
    perturb = perturb or os.environ.get(PERTURB_ENV) or None
    report = CheckReport(name, oracle=oracle_name(), tolerance=tolerance, seed=None if inputs else seed,
                         precision=precision)
    from convc.frontend.onnx.signature import check_input_shapes, declared_inputs
    declared = declared_inputs(model)
    shapes = check_input_shapes(declared, input_shapes, batch)  # symbols' sizes by name: whole shapes added
    for n, a in (inputs or {}).items():  # a symbolic input given as an array: checked at the array's shape
        if n not in shapes and n in declared and any(not isinstance(d, int) for d in declared[n] or [None]):
            shapes[n] = tuple(np.shape(a))
    shapes = shapes or None
    try:
        import_onnx(model, batch=batch, input_shapes=shapes)
    except UnsupportedOpError as e:
        report.unsupported = list(e.nodes)
        return report
    ours_model = perturbed(model, perturb) if perturb else model
    feeds = {**random_feeds(model, batch, seed, shapes), **(inputs or {})}
    producers = float_tensors(model)
    outputs = [o.name for o in model.graph.output]
    error = tensor_error if precision == "float32" else relative_error

    ours, theirs = run_convc(ours_model, feeds, batch, precision, shapes), run_oracle(model, feeds)
    report.outputs = _checks(outputs, producers, ours, theirs, error)
    if precision != "float32":
        report.top1 = {o: agree for o in outputs if o in ours and o in theirs
                       and (agree := top1_agreement(ours[o], theirs[o])) is not None}
    everything = list(producers) + [o for o in outputs if o not in producers]
    ours = run_convc(with_outputs(ours_model, everything), feeds, batch, precision, shapes)
    theirs = run_oracle(with_outputs(model, everything), feeds)
    report.layers = _checks(list(producers), producers, ours, theirs, error)
    report.first_bad = next((t for t in report.layers if t.error > tolerance), None)
    if report.first_bad is None and any(o.error > tolerance for o in report.outputs):
        report.first_bad, report.found_by_bisection = _bisect(ours_model, model, list(producers), producers, feeds,
                                                              batch, tolerance, precision, error, shapes), True
    return report


def _bisect(ours_model, model, names, producers, feeds, batch, tolerance, precision="float32",
            error=tensor_error, input_shapes=None) -> TensorCheck | None:
    """The first tensor that differs when the prefix ending at it is compiled with every optimization."""
    def check(i: int) -> TensorCheck:
        n = names[i]
        return _checks([n], producers, run_convc(with_outputs(ours_model, [n]), feeds, batch, precision,
                                                 input_shapes),
                       run_oracle(with_outputs(model, [n]), feeds), error)[0]
    lo, hi, found = 0, len(names) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        t = check(mid)
        if t.error > tolerance:
            found, hi = t, mid - 1
        else:
            lo = mid + 1
    return found


# --- an int8 model against its float original -----------------------------------------------------
# int8 moves a trained net's logits by ~1-3% of their largest value (onnxruntime's quantize_static
# ResNet-18: 2.5e-2); past 5e-2 the ranges or the kernels deserve a look
INT8_TOLERANCE = 5e-2
INT8_SAMPLES = 16  # samples compared when the batch is symbolic and not given: top-1 needs a few


@dataclass
class QuantizedCheck:
    model: str
    original: str
    runner: str = ""          # what ran the int8 model: convc, or the oracle when convc cannot compile it
    tolerance: float = INT8_TOLERANCE
    seed: int | None = 0
    samples: int = 0
    outputs: list[tuple[str, float, float, float]] = field(default_factory=list)  # (name, rel, max abs, mean abs)
    top1: dict[str, tuple[int, int]] = field(default_factory=dict)
    int8_layers: int = 0
    float_bytes: int = 0
    int8_bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(rel <= self.tolerance for _, rel, _, _ in self.outputs)

    def render(self) -> str:
        inputs = ("the given inputs" if self.seed is None
                  else f"{self.samples} random normal sample(s) (seed {self.seed})")
        lines = [f"{self.model}: int8 ({self.runner}) against its float original {self.original} on {inputs}; "
                 f"error = max |int8 - float| / max |float| per output, tolerance {self.tolerance:g}",
                 f"  {self.int8_layers} int8 layer(s): weights {self.float_bytes / 1e6:.2f} MB as float32, "
                 f"{self.int8_bytes / 1e6:.2f} MB as int8"]
        for name, rel, top, mean in self.outputs:
            mark = "ok" if rel <= self.tolerance else "OVER TOLERANCE"
            agree = self.top1.get(name)
            agreed = f", top-1 agrees on {agree[0]}/{agree[1]} sample(s)" if agree else ""
            lines.append(f"  output {name!r}: error {rel:.3g} (max |int8 - float| {top:.4g}, mean {mean:.4g})"
                         f"{agreed} {mark}")
        return "\n".join(lines)


def _run_with_fallback(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int | None,
                       input_shapes: Any) -> tuple[dict[str, np.ndarray], str]:
    """convc's outputs, or the oracle's when convc cannot compile the model (a QDQ model, before convc had
    an integer path), and which of them ran."""
    try:
        return run_convc(model, feeds, batch, input_shapes=input_shapes), "convc"
    except UnsupportedOpError:
        return run_oracle(model, feeds), f"{oracle_name()}, convc cannot compile it"


def check_quantized(model: onnx.ModelProto | str | os.PathLike, original: onnx.ModelProto | str | os.PathLike, *,
                    batch: int | None = None, seed: int = 0, tolerance: float | None = None,
                    inputs: dict[str, np.ndarray] | None = None, input_shapes: Any = None) -> QuantizedCheck:
    """Compare an int8 (QDQ) model with the float model it was quantized from (``convc check INT8.onnx
    --float FLOAT.onnx``): both run on the same inputs (seeded random, or ``inputs``), each output's
    error relative to the float output's largest value, the top-1 agreement of class-score outputs, and
    the weight bytes the int8 layers save."""
    from convc.frontend.onnx.reader import read_model
    from convc.frontend.onnx.signature import normalize
    from convc.quantize_qdq import int8_weights
    names = [str(m) if not isinstance(m, onnx.ModelProto) else (m.graph.name or "model") for m in (model, original)]
    q, f = (m if isinstance(m, onnx.ModelProto) else read_model(m) for m in (model, original))
    q_inputs, f_inputs = ({v.name for v in m.graph.input} - {t.name for t in m.graph.initializer} for m in (q, f))
    if q_inputs != f_inputs or [o.name for o in q.graph.output] != [o.name for o in f.graph.output]:
        raise ConvcError(f"{names[0]} and {names[1]} differ in their inputs {sorted(q_inputs)} / {sorted(f_inputs)} "
                         f"or outputs: compare an int8 model with the float model it was quantized from")
    weights = int8_weights(q)
    if not weights:
        raise ConvcError(f"{names[0]} has no int8 layer (no Conv, Gemm or MatMul reading int8 weights through a "
                         "DequantizeLinear): nothing quantized to compare")
    tolerance = INT8_TOLERANCE if tolerance is None else tolerance
    shapes = normalize(input_shapes) or None
    if batch is None and not inputs and not shapes:
        batch = INT8_SAMPLES
    feeds = {**random_feeds(f, batch, seed, shapes), **(inputs or {})}
    report = QuantizedCheck(names[0], names[1], tolerance=tolerance, seed=None if inputs else seed,
                            samples=len(next(iter(feeds.values()))) if feeds else 0, int8_layers=len(weights),
                            float_bytes=sum(w.float_bytes for w in weights),
                            int8_bytes=sum(w.int8_bytes for w in weights))
    theirs, _ = _run_with_fallback(f, feeds, batch, shapes)
    ours, report.runner = _run_with_fallback(q, feeds, batch, shapes)
    for name in (o.name for o in f.graph.output):
        a, e = np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64)
        if a.shape != e.shape:
            raise ConvcError(f"output {name!r}: the int8 model gives shape {list(a.shape)}, the float model "
                             f"{list(e.shape)}")
        diff = np.abs(a - e)
        report.outputs.append((name, relative_error(a, e), float(diff.max(initial=0.0)),
                               float(diff.mean()) if diff.size else 0.0))
        agree = top1_agreement(a, e)
        if agree is not None:
            report.top1[name] = agree
    return report
