"""``convc.quantize``: post-training static quantization of a float ONNX model to a QDQ int8 model.

    q = convc.quantize("model.onnx", images, method="percentile", output="model.int8.onnx")

Steps: BatchNormalization folded into the convs before it (so the int8 weights are the folded
ones, as the compiled conv uses them); the model run on the calibration data with every activation
that enters or leaves a Conv, Gemm or MatMul made an output (convc compiles it; ``onnx.reference``
runs what convc cannot compile); a range per activation (``method``: minmax, percentile or entropy,
convc/quantize_calibrate.py); then the QDQ file (convc/quantize_qdq.py): u8 asymmetric
activations, int8 symmetric weights (one scale per output channel unless ``per_channel=False``),
int32 biases, in onnxruntime's ``quantize_static`` QDQ layout, so onnxruntime and OpenVINO run it
too. ``evaluate=True`` (what ``convc quantize`` prints) also runs the quantized model on the
calibration data (convc; onnxruntime, when installed, for a convc that cannot compile QDQ models;
else onnx.reference) and compares it with the float model: top-1 agreement of class-score outputs
and the max and mean logit error.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convc.errors import ConvcError, InputError

MIN_OPSET = 13  # DequantizeLinear's per-channel axis


@dataclass
class QuantizeReport:
    """What ``convc.quantize`` did, and (with ``evaluate``) what it cost in accuracy."""
    method: str
    per_channel: bool
    reduce_range: bool
    samples: int
    batch: int
    folded_bn: int
    quantized: list[tuple[str, str]]                       # (node, op)
    skipped: list[tuple[str, str, str]]                    # (node, op, why it stays float)
    activations: int                                       # tensors with a QuantizeLinear/DequantizeLinear pair
    calibrator: str                                        # what ran the float model: convc or onnx.reference
    float_bytes: int                                       # the quantized layers' weights as float32
    int8_bytes: int                                        # ... as int8 with their scales and zero points
    evaluator: str | None = None                           # what ran the quantized model
    top1: dict[str, tuple[int, int]] = field(default_factory=dict)
    max_error: dict[str, float] = field(default_factory=dict)    # max |int8 - float|
    mean_error: dict[str, float] = field(default_factory=dict)   # mean |int8 - float|
    scale: dict[str, float] = field(default_factory=dict)        # max |float|

    def render(self) -> str:
        channel = "per-channel" if self.per_channel else "per-tensor"
        lines = [f"quantized {len(self.quantized)} layer(s) ({_ops(self.quantized)}) to int8: {channel} symmetric "
                 f"int8 weights{' (7-bit, reduce_range)' if self.reduce_range else ''}, u8 activations "
                 f"({self.activations} tensors, {self.method} ranges), int32 biases; "
                 f"{self.folded_bn} BatchNormalization(s) folded first",
                 f"calibrated on {self.samples} sample(s) in batches of {self.batch}, run by {self.calibrator}",
                 f"weights of the quantized layers: {_mb(self.float_bytes)} float32 -> {_mb(self.int8_bytes)} int8"]
        lines += [f"  kept in float: node {n!r} ({op}): {why}" for n, op, why in self.skipped]
        if self.evaluator:
            lines.append(f"accuracy against the float model on the calibration data (int8 run by {self.evaluator}):")
            for o in self.max_error:
                agree = self.top1.get(o)
                top1 = f"top-1 agrees on {agree[0]}/{agree[1]} ({100.0 * agree[0] / agree[1]:.1f}%), " if agree else ""
                rel = self.max_error[o] / self.scale[o] if self.scale[o] > 0 else 0.0
                lines.append(f"  output {o!r}: {top1}max |int8 - float| {self.max_error[o]:.4g} "
                             f"({rel:.2%} of max |float| {self.scale[o]:.4g}), mean {self.mean_error[o]:.4g}")
        return "\n".join(lines)


@dataclass
class Quantization:
    model: Any             # onnx.ModelProto, QDQ
    report: QuantizeReport


def _ops(nodes: list[tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for _, op in nodes:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{n} {op}" for op, n in counts.items()) or "none"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# --- inputs ---------------------------------------------------------------------------------------

def load_calibration(path: str | os.PathLike) -> np.ndarray:
    """A .npy file, or a directory of .npy files concatenated along the batch axis in name order."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"calibration data {str(p)!r}: no such file or directory")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npy" and f.is_file())
        if not files:
            raise InputError(f"calibration data {str(p)!r}: the directory holds no .npy file")
        arrays = [_read_npy(f) for f in files]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1 or any(a.ndim == 0 for a in arrays):
            raise InputError(f"calibration data {str(p)!r}: the .npy files disagree on the sample shape: "
                             + ", ".join(f"{f.name} {list(a.shape)}" for f, a in zip(files, arrays)))
        return np.concatenate(arrays)
    if p.suffix != ".npy":
        raise InputError(f"calibration data {str(p)!r}: expected a .npy file or a directory of .npy files")
    return _read_npy(p)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"calibration data {str(path)!r}: not a readable .npy array ({e})") from None


def _feeds(model, data: Any) -> dict[str, np.ndarray]:
    """The calibration data by graph input, float32, checked against the declared shapes."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if isinstance(data, (str, os.PathLike)):
        data = load_calibration(data)
    if isinstance(data, (list, tuple)):
        if not data:
            raise InputError("calibration data: an empty list of batches")
        data = np.concatenate([np.asarray(a) for a in data])
    if not isinstance(data, Mapping):
        if len(inputs) != 1:
            raise InputError(f"the model has {len(inputs)} inputs {[v.name for v in inputs]}: give the calibration "
                             "data as a dict of arrays by input name")
        data = {inputs[0].name: data}
    names = [v.name for v in inputs]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        raise InputError(f"calibration data names {sorted(data)}; the model's inputs are {names}")
    from onnx import helper
    out, count = {}, None
    for v in inputs:
        a = np.asarray(data[v.name])
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        want = "[" + ", ".join("N" if i == 0 else str(d) if d else "?" for i, d in enumerate(dims)) + "]"
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"calibration data for input {v.name!r} is {a.dtype}; the model takes "
                             f"{helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}: "
                             "convert (and normalize) it as for inference first")
        if a.ndim != len(dims) or any(d and s != d for d, s in zip(dims[1:], a.shape[1:])) or a.shape[0] < 1:
            raise InputError(f"calibration data for input {v.name!r} has shape {list(a.shape)}; the input is "
                             f"{want}: expected N samples of shape {want[4:] if len(dims) > 1 else '[]'} "
                             "stacked on the first axis")
        if not np.isfinite(a).all():
            raise InputError(f"calibration data for input {v.name!r} holds {int((~np.isfinite(a)).sum())} NaN or "
                             "inf value(s)")
        if count is not None and a.shape[0] != count:
            raise InputError(f"calibration data: input {v.name!r} has {a.shape[0]} samples, another input {count}")
        count = a.shape[0]
        out[v.name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def _read_model(model):
    import onnx
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    if isinstance(model, (str, os.PathLike)):
        from convc.frontend.onnx.reader import read_model
        return read_model(model)
    raise InputError(f"model: expected an ONNX file path or an onnx.ModelProto, got {type(model).__name__}")


def _check_float_model(model) -> None:
    from onnx import TensorProto, helper
    from convc.quantize_qdq import is_quantized
    if is_quantized(model):
        raise InputError(f"model {model.graph.name!r} is already quantized (it holds QuantizeLinear, "
                         "DequantizeLinear or QLinear nodes): quantize its float original")
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        t = v.type.tensor_type.elem_type
        if v.name not in inits and t != TensorProto.FLOAT:
            kind = helper.tensor_dtype_to_np_dtype(t).name if t else "untyped"
            raise InputError(f"model input {v.name!r} is {kind}: convc.quantize quantizes float32 models")


def _opset_13(model):
    import onnx
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # noqa: BLE001 -- onnx's converter raises plain RuntimeErrors
        raise ConvcError(f"model is opset {version}; per-channel DequantizeLinear needs opset {MIN_OPSET}, and "
                         f"onnx's version converter could not convert it: {str(e).strip()[:300]}") from None


DEFAULT_BATCH = 16


def _batch(model, name: str, samples: int, batch_size: int | None) -> int:
    """Samples per calibration run: the model's own batch when it declares one, else ``batch_size``."""
    v = next(v for v in model.graph.input if v.name == name)
    d = v.type.tensor_type.shape.dim[0] if v.type.tensor_type.shape.dim else None
    if d is not None and d.HasField("dim_value"):
        if batch_size is not None and batch_size != d.dim_value:
            raise InputError(f"batch_size={batch_size}: input {name!r} has a fixed batch of {d.dim_value}, so the "
                             f"calibration runs {d.dim_value} sample(s) at a time; leave batch_size out")
        return d.dim_value
    return min(batch_size or DEFAULT_BATCH, samples)


# --- the entry points -----------------------------------------------------------------------------

def quantize(model: Any, calibration_data: Any, *, method: str = "minmax", per_channel: bool = True,
             percentile: float = 99.999, reduce_range: bool = False, fold_bn: bool = True,
             batch_size: int | None = None,
             output: str | os.PathLike | None = None, threads: int | None = None,
             progress: Callable[[str], None] | None = None):
    """Quantize a float ONNX model (path or ``onnx.ModelProto``) with ``calibration_data`` (an array
    of N samples stacked on the first axis, a list of such batches, a dict by input name for several
    inputs, or a path to a .npy file or a directory of them) and return the QDQ ``onnx.ModelProto``;
    ``output`` also writes it there. ``method``: "minmax", "percentile" (clip at the ``percentile``-th
    percentile of |x|) or "entropy" (the KL-divergence threshold); ``per_channel``: one weight scale
    per output channel; ``reduce_range``: 7-bit weights (for AVX2 kernels without VNNI);
    ``fold_bn``: fold BatchNormalization into the convs first; ``batch_size``: samples per
    calibration run for a model with a symbolic batch (default 16; a model with a fixed batch runs
    at its own). ``quantize_model`` also reports the accuracy change."""
    return quantize_model(model, calibration_data, method=method, per_channel=per_channel, percentile=percentile,
                          reduce_range=reduce_range, fold_bn=fold_bn, batch_size=batch_size, output=output,
                          threads=threads, progress=progress, evaluate=False).model


def quantize_model(model: Any, calibration_data: Any, *, method: str = "minmax", per_channel: bool = True,
                   percentile: float = 99.999, reduce_range: bool = False, fold_bn: bool = True,
                   batch_size: int | None = None, output: str | os.PathLike | None = None, threads: int | None = None,
                   progress: Callable[[str], None] | None = None, evaluate: bool = True) -> Quantization:
    """``quantize`` returning the model and a QuantizeReport; ``evaluate`` runs the quantized model on
    the calibration data and compares its outputs with the float model's."""
    import onnx
    from convc.quantize_calibrate import METHODS, Ranges, Runner, calibrate, check_finite, each_batch, \
        fold_batchnorm, select
    from convc.quantize_qdq import int8_weights, write_qdq
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    for flag, value in (("per_channel", per_channel), ("reduce_range", reduce_range), ("fold_bn", fold_bn)):
        if not isinstance(value, bool):
            raise InputError(f"{flag}={value!r}: expected True or False")
    if not isinstance(percentile, (int, float)) or not 50.0 < float(percentile) <= 100.0:
        raise InputError(f"percentile={percentile!r}: expected a number in (50, 100]")
    if method != "percentile" and percentile != 99.999:
        raise InputError(f"percentile={percentile!r} applies to method='percentile' only (method={method!r})")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size={batch_size!r}: expected a positive integer")
    if output is not None:
        out_path = Path(output)
        if out_path.is_dir() or not out_path.parent.is_dir():
            raise InputError(f"output={str(output)!r}: not a file in an existing directory")
    say = progress or (lambda _: None)

    m = _check_and_prepare(_read_model(model))
    data = _feeds(m, calibration_data)
    folded = 0
    if fold_bn:
        m, folded = fold_batchnorm(m)
    selection = select(m)
    if not selection.nodes:
        why = "".join(f"\n  - node {n!r} ({op}): {w}" for n, op, w in selection.skipped)
        raise ConvcError(f"model {m.graph.name!r} has no Conv, Gemm or MatMul with constant float weights to "
                         f"quantize{why}")
    samples = len(next(iter(data.values())))
    batch = _batch(m, next(iter(data)), samples, batch_size)
    shapes = {k: v.shape for k, v in data.items()}
    inputs = set(data)
    to_run = [t for t in selection.tensors if t not in inputs]
    say(f"compiling the float model with {len(to_run)} activation(s) as outputs (batch {batch})")
    runner = Runner(m, to_run, batch, shapes, say, threads)
    ranges = Ranges(method, float(percentile))
    baseline = calibrate(runner, data, selection.tensors, ranges, say)
    check_finite(ranges, selection.tensors)
    note = f"method={method} per_channel={per_channel} reduce_range={reduce_range} samples={samples}"
    q = write_qdq(m, selection, {t: ranges.range(t) for t in selection.tensors}, per_channel=per_channel,
                  reduce_range=reduce_range, note=note)
    weights = int8_weights(q)
    report = QuantizeReport(method, per_channel, reduce_range, samples, batch, folded,
                            [(n.name, n.op_type) for n in selection.nodes], selection.skipped,
                            len(selection.tensors), runner.evaluator,
                            sum(w.float_bytes for w in weights), sum(w.int8_bytes for w in weights))
    if evaluate:
        say("running the quantized model on the calibration data")
        qrun = Runner(q, [], batch, shapes, say, threads, allow_onnxruntime=True)
        got: dict[str, list[np.ndarray]] = {o: [] for o in qrun.graph_outputs}
        for feeds, real in each_batch(data, batch, "evaluating", say):
            for o, v in qrun(feeds, real).items():
                if o in got:
                    got[o].append(v)
        report.evaluator = qrun.evaluator
        _compare(report, baseline, {o: np.concatenate(v) for o, v in got.items() if v})
    if output is not None:
        onnx.save(q, str(output))
    return Quantization(q, report)


def _check_and_prepare(model):
    _check_float_model(model)
    return _opset_13(model)


def _compare(report: QuantizeReport, float_out: dict[str, np.ndarray], int8_out: dict[str, np.ndarray]) -> None:
    from convc.check import top1_agreement
    for o, f in float_out.items():
        if o not in int8_out or np.shape(int8_out[o]) != np.shape(f):
            continue
        a, b = np.asarray(int8_out[o], np.float64), np.asarray(f, np.float64)
        diff = np.abs(a - b)
        report.max_error[o] = float(diff.max(initial=0.0))
        report.mean_error[o] = float(diff.mean()) if diff.size else 0.0
        report.scale[o] = float(np.abs(b).max(initial=0.0))
        agree = top1_agreement(a, b)
        if agree is not None:
            report.top1[o] = agree


__all__ = ["Quantization", "QuantizeReport", "load_calibration", "quantize", "quantize_model"]
