"""Calibration for ``convc.quantize``: BatchNormalization folded into the convs in ONNX, the tensors
a QDQ model quantizes, and their ranges collected by running the float model on calibration data.

The float model runs through convc itself, compiled with every tensor to calibrate made a graph
output (as ``convc check`` does); a model convc cannot compile runs in ``onnx.reference`` instead.
Ranges:

- ``minmax``: the smallest and largest value seen over all calibration samples;
- ``percentile``: the ``percentile``-th and ``(100 - percentile)``-th percentiles of each tensor's
  values over all samples, read from a 2048-bin histogram over the min-max range (a second pass),
  so one outlier activation does not stretch the 256 levels of every other value;
- ``entropy``: the clipping threshold minimizing the KL divergence between the tensor's histogram
  and its 128-level quantization (TensorRT's calibrator), from the same histogram, its zero bin
  left out (a Relu's exact zeros are a level of their own).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from convc.errors import ConvcError, InputError

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# an activation between a quantized op and its output Q: the Q goes after it, so the range is the
# activation's (u8's 256 levels are not spent on negative values a Relu drops)
FOLLOWED_ACTIVATIONS = ("Relu", "Clip")
METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
PROGRESS_SECONDS = 2.0


# --- BatchNormalization folding in ONNX -----------------------------------------------------------

def fold_batchnorm(model):
    """A copy of ``model`` with each BatchNormalization that reads the only output of a Conv with
    constant weights (and constant statistics) folded into that Conv: weights scaled by
    ``scale / sqrt(var + eps)`` per output channel, bias ``(bias - mean) * s + B``. Done on the ONNX
    graph (convc's own pass works on its IR, which writes back to ONNX with other renamings and
    fusions): the QDQ file keeps the float model's names. Returns (model, number folded)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    folded, drop = 0, []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.input) < 5 or not all(i in inits for i in bn.input[1:5]):
            continue
        conv = producer.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or len(consumers.get(bn.input[0], [])) != 1
                or bn.input[0] in outputs or conv.input[1] not in inits
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
                or len([o for o in bn.output if o]) != 1):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, shift, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        s = scale / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
             if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0]))
        w_name = fresh_name(f"{conv.input[1]}_bnfolded", inits)
        b_name = fresh_name(f"{conv.name or conv.output[0]}_bias_bnfolded", inits)
        for name, value in ((w_name, w * s.reshape(-1, *[1] * (w.ndim - 1))), (b_name, (b - mean) * s + shift)):
            inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
            g.initializer.append(inits[name])
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.append(bn)
        folded += 1
    for bn in drop:
        g.node.remove(bn)
    drop_unused_initializers(m)
    return m, folded


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            if i:
                out.setdefault(i, []).append(node)
    return out


def fresh_name(base: str, used) -> str:
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    return name


def drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    keep = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    graph_inputs = [v for v in model.graph.input if v.name not in dropped]  # old opsets list weights as inputs
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)


# --- what gets quantized --------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantizedNode:
    name: str
    op_type: str
    weight: str            # the float initializer that becomes int8
    weight_axis: int       # its output-channel axis (per-channel scales run along it)
    bias: str | None       # a 1-D float initializer that becomes int32, or None
    input: str             # the activation feeding it (quantized u8)


@dataclass(frozen=True)
class Selection:
    nodes: list[QuantizedNode]
    tensors: list[str]                         # activations getting a QuantizeLinear/DequantizeLinear pair
    skipped: list[tuple[str, str, str]]        # (node, op, why it stays float)


def node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _attr(node, name: str, default):
    from onnx import helper
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def select(model) -> Selection:
    """The Conv, Gemm and MatMul nodes to quantize (constant float weights, a float activation input)
    and the activations around them: each one's input, and its output, taken after a Relu or Clip
    that is its only consumer, as onnxruntime's quantize_static places them (QDQ format)."""
    import onnx
    from onnx import TensorProto
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    consumers = _consumers(g)
    graph_outputs = {o.name for o in g.output}
    nodes, tensors, skipped = [], [], []

    def add(t: str) -> None:
        if t not in tensors:
            tensors.append(t)

    for i, node in enumerate(g.node):
        if node.op_type not in QUANTIZED_OPS:
            continue
        name, why = node_name(node, i), None
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            why = "its second input is not a constant (only constant weights are quantized)"
        elif w.data_type != TensorProto.FLOAT:
            why = f"its weight {node.input[1]!r} is {TensorProto.DataType.Name(w.data_type)}, not FLOAT"
        elif node.input[0] in inits:
            why = "its first input is a constant"
        elif types.get(node.input[0], TensorProto.FLOAT) != TensorProto.FLOAT:
            why = f"its input {node.input[0]!r} is not float32"
        elif node.op_type == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0
                                         or _attr(node, "beta", 1.0) != 1.0):
            why = "Gemm with transA, alpha or beta other than the defaults"
        elif node.op_type in ("Gemm", "MatMul") and len(w.dims) != 2:
            why = f"a {len(w.dims)}-D weight (2-D only)"
        if why:
            skipped.append((name, node.op_type, why))
            continue
        axis = 0 if node.op_type == "Conv" else (0 if _attr(node, "transB", 0) else 1)
        if node.op_type == "MatMul":
            axis = 1
        channels = w.dims[axis]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (bias not in inits or list(inits[bias].dims) != [channels]
                                 or inits[bias].data_type != TensorProto.FLOAT):
            skipped.append((name, node.op_type, f"its bias {bias!r} is not a constant float vector of "
                                                f"{channels} values"))
            continue
        out = node.output[0]
        while out not in graph_outputs:
            after = consumers.get(out, [])
            if len(after) != 1 or after[0].op_type not in FOLLOWED_ACTIVATIONS or \
                    any(x and x not in inits for x in after[0].input[1:]):
                break
            out = after[0].output[0]
        nodes.append(QuantizedNode(name, node.op_type, node.input[1], axis, bias, node.input[0]))
        add(node.input[0])
        add(out)
    return Selection(nodes, tensors, skipped)


# --- ranges ---------------------------------------------------------------------------------------

class Ranges:
    """Per tensor: min and max over every sample; with a histogram method, a histogram of |x| over
    [0, max |x|] filled in a second pass, from which ``range`` picks the clipping threshold."""

    def __init__(self, method: str, percentile: float):
        self.method, self.percentile = method, percentile
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}
        self.hist: dict[str, np.ndarray] = {}

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def observe(self, name: str, a: np.ndarray) -> None:
        a = a[np.isfinite(a)]
        if a.size:
            self.low[name] = min(self.low.get(name, np.inf), float(a.min()))
            self.high[name] = max(self.high.get(name, -np.inf), float(a.max()))

    def observe_histogram(self, name: str, a: np.ndarray) -> None:
        top = self._absmax(name)
        if top <= 0:
            return
        h, _ = np.histogram(np.abs(a[np.isfinite(a)]), bins=BINS, range=(0.0, top))
        self.hist[name] = self.hist.get(name, 0) + h

    def _absmax(self, name: str) -> float:
        return max(abs(self.low.get(name, 0.0)), abs(self.high.get(name, 0.0)))

    def range(self, name: str) -> tuple[float, float]:
        """(low, high) to map onto u8, always containing 0 (zero must be exact: padding, Relu)."""
        if name not in self.low:
            raise ConvcError(f"tensor {name!r}: no finite value seen on the calibration data, so it has no range")
        lo, hi = self.low[name], self.high[name]
        h = self.hist.get(name)
        if self.needs_histogram and h is not None and h.sum() > 0:
            width = self._absmax(name) / BINS
            bins = (_percentile_bins(h, self.percentile) if self.method == "percentile" else _entropy_bins(h))
            t = bins * width
            lo, hi = max(lo, -t), min(hi, t)
        return min(lo, 0.0), max(hi, 0.0)


def _percentile_bins(hist: np.ndarray, percentile: float) -> int:
    cdf = np.cumsum(hist) / hist.sum()
    return int(np.searchsorted(cdf, percentile / 100.0)) + 1


def _entropy_bins(hist: np.ndarray, levels: int = 128, step: int = 16) -> int:
    """TensorRT's calibrator: the number of histogram bins kept (the rest clipped into the last one)
    whose distribution loses the least information (KL divergence) when merged into ``levels`` levels."""
    hist = hist.astype(np.float64)
    # the first bin holds the exact zeros of a Relu (half the values): zero is a u8 level of its own,
    # and left in, its spike smeared over a merged level would favour the thresholds that merge least
    hist[0] = 0.0
    best, best_i = np.inf, len(hist)
    for i in range(levels, len(hist) + 1, step):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        kept = hist[:i]
        starts = np.linspace(0, i, levels + 1).astype(int)[:-1]
        merged = np.add.reduceat(kept, starts)
        nonzero = np.add.reduceat((kept > 0).astype(np.float64), starts)
        per_bin = np.divide(merged, nonzero, out=np.zeros_like(merged), where=nonzero > 0)
        q = np.repeat(per_bin, np.diff(np.append(starts, i))) * (kept > 0)
        mask = p > 0
        if not mask.any():
            continue
        p = p / p.sum()
        q = q / max(q.sum(), 1e-300)
        q[mask & (q <= 0)] = 1e-8  # the clipped mass lands in an empty last bin: smoothed, not skipped
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best:
            best, best_i = kl, i
    return best_i


# --- running the float model ----------------------------------------------------------------------

def batches(data: dict[str, np.ndarray], size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(feeds of exactly ``size`` samples, how many of them are real): a short last batch is padded
    with repeats of its own samples, whose outputs the caller drops."""
    n = len(next(iter(data.values())))
    for start in range(0, n, size):
        real = min(size, n - start)
        feeds = {k: v[start:start + real] for k, v in data.items()}
        if real < size:
            idx = np.arange(size) % real
            feeds = {k: v[idx] for k, v in feeds.items()}
        yield feeds, real


class Runner:
    """The float (or QDQ) model with ``names`` as extra outputs, compiled by convc at a fixed batch;
    ``onnx.reference`` when convc cannot compile it (``evaluator`` says which ran); with
    ``allow_onnxruntime``, onnxruntime before onnx.reference when it is installed (to evaluate a QDQ
    model, never to calibrate: the ranges come from convc or the ONNX reference)."""

    def __init__(self, model, names: list[str], batch: int, shapes: dict[str, tuple[int, ...]],
                 progress: Callable[[str], None] | None = None, threads: int | None = None,
                 allow_onnxruntime: bool = False):
        from convc.check import with_outputs
        self.graph_outputs = [o.name for o in model.graph.output]
        outputs = list(dict.fromkeys(names + self.graph_outputs))
        self.model = with_outputs(model, outputs) if names else model
        self.outputs = outputs
        self.batch = batch
        try:
            import convc
            compiled = convc.compile(self.model, threads=threads,
                                     input_shapes={k: (batch, *s[1:]) for k, s in shapes.items()})
            self.evaluator = "convc"
            self._run = lambda feeds: compiled.run(feeds)
        except ConvcError as e:
            if allow_onnxruntime and self._onnxruntime(threads):
                return
            from onnx.reference import ReferenceEvaluator
            if progress:
                progress(f"convc cannot compile it ({str(e).splitlines()[0][:120]}): running onnx.reference")
            reference = ReferenceEvaluator(self.model)
            self.evaluator = "onnx.reference"
            self._run = lambda feeds: dict(zip(outputs, reference.run(outputs, feeds)))

    def _onnxruntime(self, threads: int | None) -> bool:
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(self.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.evaluator = f"onnxruntime {ort.__version__}"
        self._run = lambda feeds: dict(zip(self.outputs, session.run(self.outputs, feeds)))
        return True

    def __call__(self, feeds: dict[str, np.ndarray], real: int) -> dict[str, np.ndarray]:
        out = self._run(feeds)
        return {k: (np.asarray(v)[:real] if np.ndim(v) and np.shape(v)[0] == self.batch else np.asarray(v))
                for k, v in out.items()}


def each_batch(data: dict[str, np.ndarray], batch: int, what: str,
               progress: Callable[[str], None] | None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """``batches`` with a progress line every PROGRESS_SECONDS."""
    n = len(next(iter(data.values())))
    count = -(-n // batch)
    shown = time.perf_counter()
    for i, item in enumerate(batches(data, batch)):
        if progress and time.perf_counter() - shown >= PROGRESS_SECONDS:
            progress(f"{what}: batch {i + 1}/{count} ({min(n, i * batch)}/{n} samples)")
            shown = time.perf_counter()
        yield item


def calibrate(runner: Runner, data: dict[str, np.ndarray], tensors: list[str], ranges: Ranges,
              progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Fill ``ranges`` for ``tensors`` (graph inputs read from ``data``); returns the float model's
    graph outputs on all of ``data``, concatenated (the baseline of the accuracy report)."""
    outputs: dict[str, list[np.ndarray]] = {o: [] for o in runner.graph_outputs}
    for feeds, real in each_batch(data, runner.batch, "calibrating", progress):
        got = {**{k: v[:real] for k, v in feeds.items()}, **runner(feeds, real)}
        for t in tensors:
            ranges.observe(t, got[t])
        for o in outputs:
            if o in got:
                outputs[o].append(got[o])
    if ranges.needs_histogram:
        for feeds, real in each_batch(data, runner.batch, "histograms", progress):
            got = {**{k: v[:real] for k, v in feeds.items()}, **runner(feeds, real)}
            for t in tensors:
                ranges.observe_histogram(t, got[t])
    return {o: np.concatenate(v) for o, v in outputs.items() if v}


def check_finite(ranges: Ranges, tensors: list[str]) -> None:
    missing = [t for t in tensors if t not in ranges.low]
    if missing:
        raise InputError(f"the calibration data gives no finite value for {len(missing)} tensor(s) "
                         f"({', '.join(repr(t) for t in missing[:5])}): it holds NaN or inf")
