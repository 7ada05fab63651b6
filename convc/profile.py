"""``convc.profile``: per-layer MACs, parameters and memory of a model, optionally timed.

A *layer* is one op of the compiled graph as the user thinks of it: a Conv with the
BatchNormalization, Relu and residual Add folded or fused into it is one layer
("Conv+BatchNormalization+Add+Relu"), and its im2col buffer belongs to it. Counts come from the
imported graph, before any pass (folding must not change MACs, and PyTorch counts the BN
parameters that folding merges into the conv); memory and weight bytes come from the compiled
plan, which is what runs.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convc.ir import Graph
from convc.ops import OpKind
from convc.ops.conv import WINOGRAD_ALGORITHMS
from convc.ops.layout import to_channels_first
from convc.passes.macs import Cost, Params, count_params, op_costs

CONVENTION = (
    "MACs = multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul only (group-aware, padded taps "
    "counted, bias excluded; torchvision's published \"GFLOPS\" are these MACs). FLOPs = 2 x MACs. "
    "Other-op FLOPs (BN, activations, pooling, adds, softmax, bias) are a separate column. "
    "Params = unique float constants read by compute ops, BN running statistics listed separately.")


@dataclass(frozen=True)
class Layer:
    name: str
    op: str                          # fused ops joined by "+", e.g. "Conv+BatchNormalization+Relu"
    output_shape: tuple[int, ...]
    params: int
    bn_stats: int
    macs: int
    other_flops: int
    weight_bytes: int                # constants of the compiled layer (after folding)
    output_bytes: int
    members: tuple[str, ...]         # the imported ops this layer computes
    unmodelled: tuple[str, ...] = ()
    seconds: float | None = None     # median time with measure=True
    # with measure=True: (op name, median seconds) of each native kernel whose time the layer sums,
    # e.g. a stem conv's input layout change ("x_to_nhwc") and the conv itself
    kernels: tuple[tuple[str, float], ...] = ()

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def gflops_per_second(self) -> float | None:
        if self.seconds is None or self.seconds <= 0 or not self.macs:
            return None
        return self.flops / self.seconds / 1e9


@dataclass(frozen=True)
class Memory:
    weight_bytes: int            # every constant of the compiled model
    activation_bytes: int        # every arena tensor in a buffer of its own (no reuse)
    lower_bound_bytes: int       # the most bytes live at one step
    arena_bytes: int             # the planned arena
    io_bytes: int                # graph inputs and outputs (the caller's arrays, not in the arena)
    live_bytes: tuple[int, ...]  # per step of the execution order

    @property
    def saving_bytes(self) -> int:
        return self.activation_bytes - self.arena_bytes


@dataclass
class Profile:
    model: str
    batch: int | None
    layers: list[Layer]
    memory: Memory
    notes: list[tuple[str, str]] = field(default_factory=list)  # (op, why a pass did not apply)
    folded: list[str] = field(default_factory=list)  # imported ops evaluated at compile time or unused
    peak: Any = None          # convc.codegen.peak.Peak when measured
    total_seconds: float | None = None  # the sum of the layers' medians: the rows and the total agree
    wall_seconds: float | None = None  # the median run as the caller's clock saw it (call overhead included)
    convention: str = CONVENTION
    warnings: list[str] = field(default_factory=list)  # e.g. a measurement taken under load
    int8: list[Any] = field(default_factory=list)  # convc.quantize_qdq.Int8Weight per int8 layer of a QDQ model

    # --- totals ---------------------------------------------------------------------------
    @property
    def total_macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def total_other_flops(self) -> int:
        return sum(l.other_flops for l in self.layers)

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def total_bn_stats(self) -> int:
        return sum(l.bn_stats for l in self.layers)

    @property
    def total_weight_bytes(self) -> int:
        return sum(l.weight_bytes for l in self.layers)

    @property
    def peak_memory_bytes(self) -> int:
        """The planned activation arena: the most memory the model's activations take at once."""
        return self.memory.arena_bytes

    @property
    def measured(self) -> bool:
        return any(l.seconds is not None for l in self.layers)

    @property
    def unmodelled(self) -> list[str]:
        return [u for l in self.layers for u in l.unmodelled]

    def share(self, layer: Layer) -> float:
        """The layer's share of the total MACs (of the time, when measured)."""
        if self.measured and self.total_seconds:
            return (layer.seconds or 0.0) / self.total_seconds
        return layer.macs / self.total_macs if self.total_macs else 0.0

    # --- views ----------------------------------------------------------------------------
    def top(self, n: int) -> list[Layer]:
        """The ``n`` costliest layers: by time when measured, else by MACs, then other-op FLOPs."""
        if self.measured:
            key = lambda l: (l.seconds or 0.0, l.macs)
        else:
            key = lambda l: (l.macs, l.other_flops)
        return sorted(self.layers, key=key, reverse=True)[:n]

    def by_op(self, top: int | None = None) -> list[dict[str, Any]]:
        """One summary row per op (the layer's first op: a Conv with BN and Relu fused in is a Conv),
        costliest first; ``fused`` counts the fused combinations behind the row, e.g.
        ``{"Conv+BatchNormalization+Relu": 3, "Conv": 1}``. ``top`` keeps the ``top`` costliest rows."""
        groups: dict[str, dict[str, Any]] = {}
        for l in self.layers:
            op = l.op.split("+")[0]
            row = groups.setdefault(op, {"op": op, "layers": 0, "params": 0, "macs": 0, "other_flops": 0,
                                         "weight_bytes": 0, "output_bytes": 0, "seconds": None, "fused": {}})
            row["layers"] += 1
            row["fused"][l.op] = row["fused"].get(l.op, 0) + 1
            for k in ("params", "macs", "other_flops", "weight_bytes", "output_bytes"):
                row[k] += getattr(l, k)
            if l.seconds is not None:
                row["seconds"] = (row["seconds"] or 0.0) + l.seconds
        if self.measured:
            rows = sorted(groups.values(), key=lambda r: (r["seconds"] or 0.0, r["macs"]), reverse=True)
        else:
            rows = sorted(groups.values(), key=lambda r: (r["macs"], r["other_flops"]), reverse=True)
        return rows[:top] if top else rows

    SLOW_FRACTION = 0.5  # a layer with MACs below this fraction of the all-core peak is marked slow

    def is_slow(self, l: Layer) -> bool:
        """Whether a measured layer that does MACs (a conv or a matrix product: elementwise layers are
        bound by memory, not FMAs) ran below half this machine's all-core FMA peak: a kernel to look at."""
        gf = l.gflops_per_second
        return bool(self.measured and self.peak and l.macs and gf
                    and self.peak.percent(gf, True) < 100 * self.SLOW_FRACTION)

    def op_share(self, row: dict[str, Any]) -> float:
        """A ``by_op`` row's share of the total MACs (of the time, when measured)."""
        if self.measured and self.total_seconds:
            return (row["seconds"] or 0.0) / self.total_seconds
        return row["macs"] / self.total_macs if self.total_macs else 0.0

    # --- serialization --------------------------------------------------------------------
    def layer_dict(self, l: Layer) -> dict[str, Any]:
        d = {"name": l.name, "op": l.op, "output_shape": list(l.output_shape), "params": l.params,
             "bn_stats": l.bn_stats, "macs": l.macs, "flops": l.flops, "other_flops": l.other_flops,
             "weight_bytes": l.weight_bytes, "output_bytes": l.output_bytes, "share": self.share(l),
             "members": list(l.members), "unmodelled": list(l.unmodelled)}
        if self.measured:
            gf = l.gflops_per_second
            d.update(seconds=l.seconds, kernels=[{"name": k, "seconds": s} for k, s in l.kernels],
                     gflops_per_second=gf,
                     percent_of_single_core_peak=self.peak.percent(gf) if gf and self.peak else None,
                     percent_of_all_core_peak=self.peak.percent(gf, True) if gf and self.peak else None,
                     below_half_peak=self.is_slow(l))
        return d

    def to_dict(self, top: int | None = None, by_op: bool = False) -> dict[str, Any]:
        """Everything as plain data. ``top`` keeps the ``top`` costliest layers (by time when measured,
        else by MACs) in ``layers``; ``by_op`` replaces ``layers`` by ``by_op``, one row per op type
        (``top`` then keeps the costliest op types). Totals and memory are always the whole model's."""
        m = self.memory
        out: dict[str, Any] = {
            "model": self.model, "batch": self.batch, "convention": self.convention,
            "totals": {"macs": self.total_macs, "flops": self.total_flops, "other_flops": self.total_other_flops,
                       "params": self.total_params, "bn_stats": self.total_bn_stats,
                       "weight_bytes": self.total_weight_bytes, "layers": len(self.layers)},
            "memory": {"weight_bytes": m.weight_bytes, "activation_bytes": m.activation_bytes,
                       "lower_bound_bytes": m.lower_bound_bytes, "arena_bytes": m.arena_bytes,
                       "saving_bytes": m.saving_bytes, "io_bytes": m.io_bytes, "live_bytes": list(m.live_bytes)}}
        if by_op:
            out["by_op"] = [{**r, "share": self.op_share(r)} for r in self.by_op(top)]
        else:
            out["layers"] = [self.layer_dict(l) for l in (self.top(top) if top else self.layers)]
        if top:
            out["top"] = top
        out.update({"unmodelled": self.unmodelled, "notes": [{"op": op, "reason": why} for op, why in self.notes],
                    "folded": list(self.folded), "warnings": list(self.warnings)})
        if self.int8:
            out["int8_layers"] = [{**asdict(w), "saved_bytes": w.saved_bytes} for w in self.int8]
            out["totals"]["int8_saved_bytes"] = sum(w.saved_bytes for w in self.int8)
        if self.measured:
            out["totals"]["seconds"] = self.total_seconds
            out["totals"]["wall_seconds"] = self.wall_seconds
        if self.peak is not None:
            out["peak"] = asdict(self.peak)
        return out

    def to_json(self, indent: int | None = 2, top: int | None = None, by_op: bool = False) -> str:
        return json.dumps(self.to_dict(top=top, by_op=by_op), indent=indent)

    def __str__(self) -> str:
        """The report as ``convc profile`` prints it when piped (convc/report.py's plain table)."""
        from convc.report import render_text
        return render_text(self)

    CSV_COLUMNS = ("name", "op", "output_shape", "params", "bn_stats", "macs", "flops", "other_flops",
                   "weight_bytes", "output_bytes", "share")
    CSV_TIMING = ("seconds", "gflops_per_second", "percent_of_single_core_peak", "percent_of_all_core_peak",
                  "below_half_peak")
    CSV_BY_OP = ("op", "layers", "fused", "params", "macs", "other_flops", "weight_bytes", "output_bytes", "share")

    def to_csv(self, top: int | None = None, by_op: bool = False) -> str:
        """One row per layer (the ``top`` costliest with ``top``; one per op type with ``by_op``) and a
        final TOTAL row of the whole model; shapes as ``1x64x56x56``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        total = {"name": "TOTAL", "op": "TOTAL" if by_op else "", "output_shape": "", "params": self.total_params,
                 "bn_stats": self.total_bn_stats, "macs": self.total_macs, "flops": self.total_flops,
                 "other_flops": self.total_other_flops, "weight_bytes": self.total_weight_bytes,
                 "output_bytes": sum(l.output_bytes for l in self.layers), "share": 1.0, "seconds": self.total_seconds,
                 "layers": len(self.layers), "fused": ""}
        if by_op:
            columns = self.CSV_BY_OP + (("seconds",) if self.measured else ())
            w.writerow(columns)
            for r in self.by_op(top):
                d = {**r, "share": self.op_share(r), "fused": " ".join(f"{k}:{n}" for k, n in r["fused"].items())}
                w.writerow(["" if d.get(c) is None else d[c] for c in columns])
        else:
            columns = self.CSV_COLUMNS + (self.CSV_TIMING if self.measured else ())
            w.writerow(columns)
            for l in (self.top(top) if top else self.layers):
                d = self.layer_dict(l)
                d["output_shape"] = "x".join(map(str, l.output_shape))
                w.writerow(["" if d.get(c) is None else d[c] for c in columns])
        w.writerow(["" if total.get(c) is None else total[c] for c in columns])
        return buf.getvalue()


# --- analysis --------------------------------------------------------------------------------
def _final_layers(imported: Graph, plan) -> tuple[list[tuple[str, list, list[str]]], list[str]]:
    """Group the compiled ops into layers: (layer name, compiled ops, imported member ops).

    Also returns the imported ops that no compiled op computes (folded at compile time or unused)."""
    g = plan.graph
    origin = g.metadata.get("origin", {})
    absorbed = g.metadata.get("absorbed", {})
    layers: dict[str, tuple[list, list[str]]] = {}
    for op in plan.order:
        key = origin.get(op.name, op.name)
        ops, members = layers.setdefault(key, ([], []))
        ops.append(op)
        for m in (key,) + tuple(absorbed.get(op.name, ())):
            m = origin.get(m, m)
            if m not in members and m in imported.nx:
                members.append(m)
    covered = {m for _, members in layers.values() for m in members}
    folded = [op.name for op in imported.ops() if op.name not in covered]
    return [(k, ops, members) for k, (ops, members) in layers.items()], folded


def analyze(imported: Graph, plan, model_name: str = "model") -> Profile:
    """The profile of ``imported`` compiled as ``plan`` (from ``passes.pipeline.pipeline``)."""
    costs = op_costs(imported)
    params = count_params(imported)
    g = plan.graph
    kinds = {op.name: op.kind.value for op in imported.ops()}
    seen_constants: set[str] = set()
    groups, folded = _final_layers(imported, plan)
    layers = []
    for name, ops, members in groups:
        cost = sum((costs[m] for m in members), Cost())
        p = sum((params[m] for m in members), Params())
        weight_bytes = 0
        int8 = any(op.kind is OpKind.INT8_CONV for op in ops)
        for op in ops:
            for t in op.inputs:
                tensor = g.tensor(t)
                # an integer conv's int8 weights and int32 bias; other integer constants are indices and shapes
                weights = tensor.dtype.kind == "f" or op.kind is OpKind.INT8_CONV
                if tensor.data is not None and t not in seen_constants and weights:
                    seen_constants.add(t)
                    weight_bytes += tensor.nbytes
        out = g.tensor(ops[-1].outputs[0])
        shape = out.shape  # shown in ONNX (channels-first) order whatever layout the kernel runs in
        if getattr(ops[-1].attrs, "channels_last", False):
            shape = to_channels_first(shape)
        label = "+".join(kinds[m] for m in members) if members else ops[-1].kind.value
        if int8:
            label += " (int8)"
        layers.append(Layer(name, label, shape, p.params, p.bn_stats, cost.macs, cost.other_flops, weight_bytes,
                            sum(g.tensor(t).nbytes for t in ops[-1].outputs), tuple(members), cost.unmodelled))
    mem = plan.memory
    weights = sum(g.tensor(n).nbytes for n in mem.constants)
    io_bytes = sum(g.tensor(n).nbytes for n in dict.fromkeys(g.inputs + g.outputs))
    memory = Memory(weights, mem.total_activation_bytes, mem.lower_bound_bytes, mem.arena_bytes, io_bytes,
                    tuple(mem.live_bytes))
    batch = g.tensor(g.inputs[0]).shape[0] if g.inputs and g.tensor(g.inputs[0]).shape else None
    return Profile(model_name, batch, layers, memory, list(g.metadata.get("pass_notes", [])), folded)


PEAK_SLACK = 1.1  # a layer faster than the all-core peak by more than this: the peak is wrong
# The layers' times tile one run: every kernel call lies between two stamps the calling thread
# takes (a parallel kernel's call returns when all its tasks are done), and the stamps lie within
# the run as the caller's monotonic clock sees it. So per run: sum of layers <= wall time, and the
# gap is the entry point's own work (copying an output) plus Python's call overhead
# (checking inputs, allocating outputs: tens of microseconds). A larger gap is time no layer holds.
UNCOVERED_LIMIT = 0.10  # of the wall time, and
UNCOVERED_FLOOR = 1e-3  # seconds: below this a gap is call overhead on a small model
NOISY_SPREAD = 0.20  # interquartile range of the runs' totals over their median: above this, measured under load


def _spread(totals: list[float]) -> float:
    """The runs' interquartile range over their median (0 for fewer than 4 runs)."""
    if len(totals) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(totals, n=4)
    median = statistics.median(totals)
    return (q3 - q1) / median if median > 0 else 0.0


def measure_layers(profile: Profile, imported: Graph, repeats: int = 10, threads: int | None = None,
                   seed: int = 0, progress: Any = None) -> Profile:
    """Compile ``imported`` with per-kernel timestamps, run it ``repeats`` times on seeded random
    inputs and fill in the median seconds of each layer and this machine's peak.

    The total is the sum of the layers' medians, from the same runs, so the rows add up to it. When
    the runs' totals spread more than NOISY_SPREAD (other processes on the cores), the model is
    measured once more and the quieter round kept, and likewise when other processes used more than
    OTHERS_LIMIT of the cores meanwhile (/proc/stat); if that is noisy too, ``warnings`` says so (and
    likewise for a peak measured under load, which is not cached)."""
    from convc.codegen.peak import OTHERS_LIMIT, OtherLoad, peak
    from convc.compiler import compile_graph
    say = progress or (lambda _: None)
    say("compiling with per-layer timers")
    model = compile_graph(imported, threads=threads, instrument=True, progress=progress)  # passes, codegen, LLVM
    g = model.graph
    origin = g.metadata.get("origin", {})
    rng = np.random.default_rng(seed)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in model.inputs}
    model.run_timed(feeds)  # warm-up: first-touch page faults of the arena and outputs

    walls: list[float] = []  # of the kept round

    def one_round() -> tuple[list[dict[str, float]], float, float]:
        runs: list[dict[str, float]] = []
        walls.clear()
        load = OtherLoad()
        for _ in range(max(1, repeats)):
            start = time.monotonic_ns()  # the clock the kernels' stamps read
            runs.append(model.run_timed(feeds)[1])  # seconds per kernel (op name)
            walls.append((time.monotonic_ns() - start) * 1e-9)
        return runs, _spread([sum(r.values()) for r in runs]), load.stop()

    def noisy(spread: float, others: float) -> str | None:
        if spread > NOISY_SPREAD:
            return (f"the runs' times spread {100 * spread:.0f}% around their median (more than "
                    f"{100 * NOISY_SPREAD:.0f}%)")
        if others > OTHERS_LIMIT:
            return f"other processes used {100 * others:.0f}% of the cores meanwhile"
        return None

    say(f"timing {max(1, repeats)} runs")
    runs, spread, others = one_round()
    first_walls = list(walls)
    warnings = []
    why = noisy(spread, others)
    if why:
        say(f"{why}: timing again")
        again, spread_again, others_again = one_round()
        if (noisy(spread_again, others_again) is None
                or (spread_again + others_again) < (spread + others)):
            runs, spread, others = again, spread_again, others_again
        else:
            walls[:] = first_walls
        why = noisy(spread, others)
        if why:
            warnings.append(f"measured under load: {why}; the times are not reliable")
    # a layer's time is the sum of its kernels' times in each run (a layer may run as several
    # kernels: a layout change of its input, then the conv), then the median over the runs
    kernels: dict[str, list[str]] = {}
    for op_name in runs[0]:
        kernels.setdefault(origin.get(op_name, op_name), []).append(op_name)
    per_layer = [{layer: sum(r[k] for k in ks) for layer, ks in kernels.items()} for r in runs]
    layers = [dataclasses.replace(l, seconds=statistics.median(r.get(l.name, 0.0) for r in per_layer),
                                  kernels=tuple((k, statistics.median(r[k] for r in runs)) for k in kernels.get(l.name, ())))
              for l in profile.layers]
    total = sum(l.seconds or 0.0 for l in layers)
    wall = statistics.median(walls)
    unplaced = [k for layer, ks in kernels.items() if layer not in {l.name for l in layers} for k in ks]
    if unplaced:
        warnings.append(f"kernels timed but in no layer (their time is left out): {', '.join(map(repr, unplaced))}")
    warnings += _coverage_warnings([sum(r.get(l.name, 0.0) for l in layers) for r in per_layer], walls)
    say("this machine's FMA peak (measured once, then cached)")
    machine = peak()
    # a Winograd conv multiplies less than its MACs: its GFLOP/s-equivalent may pass the peak rightly
    winograd = {origin.get(op.name, op.name) for op in g.ops()
                if op.kind is OpKind.CONV and op.attrs.algorithm in WINOGRAD_ALGORITHMS}
    fastest = max((l.gflops_per_second or 0.0 for l in layers if l.name not in winograd), default=0.0)
    if fastest > PEAK_SLACK * machine.all_core_gflops:  # a peak cached from a loaded machine: measure again
        say(f"a layer ran at {fastest:.1f} GFLOP/s, above the cached peak ({machine.all_core_gflops:.1f} on "
            f"{machine.cores} cores): measuring the peak again")
        machine = peak(refresh=True)
        if fastest > PEAK_SLACK * machine.all_core_gflops:
            warnings.append(f"a layer ran at {fastest:.1f} GFLOP/s, above the measured peak "
                            f"({machine.all_core_gflops:.1f} GFLOP/s on {machine.cores} cores): % of peak is unreliable")
    if machine.noisy:
        warnings.append(f"peak {machine.noisy}")
    return Profile(profile.model, profile.batch, layers, profile.memory, profile.notes, profile.folded, machine,
                   total, wall, warnings=profile.warnings + warnings)


def _coverage_warnings(sums: list[float], walls: list[float]) -> list[str]:
    """Whether each run's layers (``sums``: the layers' seconds added up, per run) fit in its wall
    time and fill it (module comment at UNCOVERED_LIMIT)."""
    over = [(s, w) for s, w in zip(sums, walls) if s > w]
    if over:  # layers longer than the run that holds them: the stamps or their clock are wrong
        s, w = over[0]
        return [f"per-layer times are wrong: the layers of {len(over)} of {len(sums)} runs add up to more than the "
                f"run took ({1e3 * s:.3f} ms in a {1e3 * w:.3f} ms run)"]
    gaps = [w - s for s, w in zip(sums, walls)]
    gap, wall = statistics.median(gaps), statistics.median(walls)
    if gap > max(UNCOVERED_LIMIT * wall, UNCOVERED_FLOOR):
        return [f"the layers hold {1e3 * (wall - gap):.3f} ms of a {1e3 * wall:.3f} ms run (medians): "
                f"{1e3 * gap:.3f} ms of each run is in no layer"]
    return []


def profile(model: Any, batch: int | None = None, *, measure: bool = False, repeats: int = 10,
            threads: int | None = None, train: bool = False, loss: str = "cross_entropy",
            optimizer: Any = None, progress: Any = None, input_shapes: Any = None) -> Profile:
    """Profile an ONNX model (path, bytes, ``onnx.ModelProto``) or a convc Graph (``input_shapes``
    fixes symbolic input dimensions, as in ``convc.compile``; not with ``train``).

    Returns a ``Profile``: ``.layers`` (one row per fused layer), ``.total_macs``,
    ``.total_params``, ``.peak_memory_bytes`` (the planned activation arena), ``.memory``,
    ``.to_json()`` and ``.to_csv()``. With ``measure`` the model is compiled and run, and each
    layer gets its median time over ``repeats`` runs; the machine's FMA peak is measured once and
    cached (``convc.codegen.peak``).

    ``train=True`` profiles the training step instead (``convc.train_profile``: forward and backward
    MACs per layer, saved activations, gradient and optimizer-state bytes, the step's peak memory),
    for ``loss`` and ``optimizer`` (a ``convc.optim`` optimizer, default SGD). ``progress`` receives a
    line per phase (compiling, timing, the peak; building, compiling and timing a training step)."""
    from convc.limits import positive_int
    batch, threads = positive_int("batch", batch), positive_int("threads", threads)
    if train:
        if input_shapes is not None:
            from convc.errors import InputError
            raise InputError("input_shapes= is not available with train=True: the training step runs at the "
                             "model's input shape, with batch=")
        from convc.train_profile import profile_training
        return profile_training(model, batch, loss=loss, optimizer=optimizer, measure=measure, repeats=repeats,
                                progress=progress)
    from pathlib import Path

    from convc.compiler import load_graph
    from convc.passes.pipeline import pipeline
    if isinstance(model, (str, Path)):
        name = Path(model).name
    elif isinstance(model, Graph):
        name = model.name
    else:
        name = getattr(getattr(model, "graph", None), "name", "") or "model"
    from convc.options import applied, resolve_options
    imported = load_graph(str(model) if isinstance(model, Path) else model, batch, input_shapes=input_shapes)
    with applied(resolve_options(threads=threads)):  # the passes choose for the threads measured with
        result = analyze(imported, pipeline(imported), name)
    if measure:
        result = measure_layers(result, imported, repeats=repeats, threads=threads, progress=progress)
    result.int8 = _int8_layers(model)
    return result


def _int8_layers(model: Any) -> list:
    """The int8 layers of a QDQ ONNX model, with their weight bytes as float32 and as int8 (read from
    the file: the bytes a user ships and loads)."""
    from pathlib import Path
    if isinstance(model, Graph) or hasattr(model, "to_graph"):
        return []
    import onnx
    from convc.quantize_qdq import int8_weights
    if isinstance(model, (str, Path)):
        from convc.frontend.onnx.reader import read_model
        model = read_model(model)
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    return int8_weights(model) if isinstance(model, onnx.ModelProto) else []
