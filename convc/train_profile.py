"""``convc.profile(..., train=True)``: what a training step costs, per layer and in memory.

The view training frameworks do not give: for each layer of the model, the MACs of its forward and
of its backward (dX and dW), what of its forward output the backward reads and so must stay alive
("saved": each such tensor counted once, under the layer that produced it; the model's input under
the first layer that reads it, so the column sums to the step's total), the bytes of its parameters, their gradients and their optimizer state; then the memory
of the planned step (persistent training state, and the activation arena holding activations,
saved tensors, gradients and kernel scratch, with its liveness lower bound). With ``measure`` the
step is compiled with per-kernel timestamps and each layer gets its forward, backward and update
time.

Layers are the ops of the model as trained (BatchNormalization and Relu are layers of their own:
training does not fold or fuse them). Backward ops are attributed to the forward op whose gradient
they compute (``graph.metadata["grad_of"]``), a gradient Sum to the producer of the tensor, an
update to the layer reading the parameter.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convc.ir import Graph
from convc.ops import op_def

PHASES = ("forward", "loss", "backward", "update")


@dataclass(frozen=True)
class TrainLayer:
    name: str
    op: str
    output_shape: tuple[int, ...]
    forward_macs: int
    backward_macs: int
    saved_bytes: int        # its forward outputs some backward op reads (kept alive until then)
    param_bytes: int
    grad_bytes: int
    state_bytes: int        # optimizer state of its parameters
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> median seconds, when measured

    @property
    def total_macs(self) -> int:
        return self.forward_macs + self.backward_macs


@dataclass(frozen=True)
class TrainMemory:
    param_bytes: int
    optimizer_state_bytes: int
    running_stats_bytes: int
    grad_bytes: int              # every parameter gradient (in the arena)
    saved_bytes: int             # every forward tensor the backward reads (in the arena, or the input)
    activation_bytes: int        # every arena tensor in its own buffer (no reuse)
    lower_bound_bytes: int       # the most arena bytes live at one step of the schedule
    arena_bytes: int             # the planned arena, kernel scratch included
    io_bytes: int                # the batch, its labels and the loss (the caller's arrays)

    @property
    def state_bytes(self) -> int:
        """Persistent training state: parameters, optimizer state, running statistics."""
        return self.param_bytes + self.optimizer_state_bytes + self.running_stats_bytes

    @property
    def peak_bytes(self) -> int:
        """Everything the planned step touches: persistent state, arena and the caller's arrays."""
        return self.state_bytes + self.arena_bytes + self.io_bytes


@dataclass
class TrainProfile:
    model: str
    batch: int
    loss: str
    optimizer: str
    layers: list[TrainLayer]
    memory: TrainMemory
    loss_seconds: float | None = None
    step_seconds: float | None = None       # median of the whole step, when measured
    extra_seconds: dict[str, float] = field(default_factory=dict)  # bookkeeping outside the layers

    @property
    def forward_macs(self) -> int:
        return sum(l.forward_macs for l in self.layers)

    @property
    def backward_macs(self) -> int:
        return sum(l.backward_macs for l in self.layers)

    @property
    def total_macs(self) -> int:
        return self.forward_macs + self.backward_macs

    @property
    def measured(self) -> bool:
        return self.step_seconds is not None

    def top(self, n: int | None) -> list[TrainLayer]:
        """The ``n`` costliest layers (by forward + backward + update time when measured, else by
        forward + backward MACs), costliest first; every layer when ``n`` is None."""
        if not n:
            return list(self.layers)
        if self.measured:
            key = lambda l: (sum(l.seconds.values()), l.total_macs)
        else:
            key = lambda l: (l.total_macs, l.saved_bytes)
        return sorted(self.layers, key=key, reverse=True)[:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """Everything as plain data; ``top`` keeps the ``top`` costliest layers (totals stay whole-model)."""
        m = self.memory
        return {"model": self.model, "batch": self.batch, "loss": self.loss, "optimizer": self.optimizer,
                "totals": {"forward_macs": self.forward_macs, "backward_macs": self.backward_macs,
                           "total_macs": self.total_macs, "step_seconds": self.step_seconds},
                "memory": {**asdict(m), "state_bytes": m.state_bytes, "peak_bytes": m.peak_bytes},
                "layers": [{**asdict(l), "output_shape": list(l.output_shape)} for l in self.top(top)],
                **({"top": top} if top else {})}

    def to_json(self, indent: int | None = 2, top: int | None = None) -> str:
        return json.dumps(self.to_dict(top), indent=indent)

    CSV_COLUMNS = ("name", "op", "output_shape", "forward_macs", "backward_macs", "saved_bytes", "param_bytes",
                   "grad_bytes", "state_bytes")

    def to_csv(self, top: int | None = None) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        timed = [f"{p}_seconds" for p in PHASES if p != "loss"] if self.measured else []
        w.writerow(self.CSV_COLUMNS + tuple(timed))
        for l in self.top(top):
            row = [getattr(l, c) for c in self.CSV_COLUMNS]
            row[2] = "x".join(map(str, l.output_shape))
            w.writerow(row + [l.seconds.get(p[:-8], "") for p in timed])
        return buf.getvalue()

    def __str__(self) -> str:
        return render_text(self)


def _nbytes(n: float) -> str:
    """Bytes with binary prefixes, as in the inference profile (convc/report.py): '10.72 MiB'."""
    from convc.report import nbytes
    return nbytes(n)


def _count(n: float) -> str:
    """Counts with decimal prefixes, as in the inference profile: '4.09 G'."""
    from convc.report import count
    return count(n)


def header_lines(p: TrainProfile) -> list[str]:
    lines = [f"convc profile --train: {p.model} (batch {p.batch}, loss {p.loss}, optimizer {p.optimizer})",
             f"  MACs per step: forward {_count(p.forward_macs)}, backward {_count(p.backward_macs)} "
             f"({p.backward_macs / p.forward_macs:.2f}x the forward), total {_count(p.total_macs)}"
             if p.forward_macs else f"  MACs per step: backward {_count(p.backward_macs)}"]
    if p.measured:
        lines.append(f"  measured: {1e3 * p.step_seconds:.3f} ms per step (median), "
                     f"{2 * p.total_macs / p.step_seconds / 1e9:.1f} GFLOP/s")
    return lines


def table(p: TrainProfile, top: int | None = None) -> tuple[list[str], list[list[str]]]:
    """The per-layer table's column headers and rows (the ``top`` costliest layers with ``top``)."""
    cols = ["#", "layer", "op", "output", "fwd MACs", "bwd MACs", "saved", "params", "grads", "opt state"]
    if p.measured:
        cols += ["fwd ms", "bwd ms", "upd ms"]
    rows = []
    index = {l.name: i for i, l in enumerate(p.layers, 1)}
    for l in p.top(top):
        row = [str(index[l.name]), l.name, l.op, "x".join(map(str, l.output_shape)), _count(l.forward_macs),
               _count(l.backward_macs), _nbytes(l.saved_bytes), _nbytes(l.param_bytes), _nbytes(l.grad_bytes),
               _nbytes(l.state_bytes)]
        if p.measured:
            row += [f"{1e3 * l.seconds.get(ph, 0.0):.3f}" for ph in ("forward", "backward", "update")]
        rows.append(row)
    return cols, rows


def top_line(p: TrainProfile, shown: int) -> str:
    return (f"({shown} costliest of {len(p.layers)} layers shown, by "
            f"{'time' if p.measured else 'forward + backward MACs'}; totals are the whole step)")


def memory_lines(p: TrainProfile) -> list[str]:
    m = p.memory
    mem = [("parameters", m.param_bytes), ("optimizer state", m.optimizer_state_bytes),
           ("BN running statistics", m.running_stats_bytes),
           ("persistent training state (the three above)", m.state_bytes),
           ("parameter gradients", m.grad_bytes), ("saved activations (read by the backward)", m.saved_bytes),
           ("arena tensors, each in its own buffer", m.activation_bytes),
           ("arena liveness lower bound", m.lower_bound_bytes), ("planned arena (with kernel scratch)", m.arena_bytes),
           ("batch, labels and loss (caller's arrays)", m.io_bytes),
           ("peak memory of the planned step", m.peak_bytes)]
    w = max(len(a) for a, _ in mem)
    return ["Memory of the training step"] + [f"  {a:<{w}}  {_nbytes(b):>10}" for a, b in mem]


def render_text(p: TrainProfile, top: int | None = None) -> str:
    """The plain report (``convc profile --train`` piped; convc/report.py's render_train_rich on a terminal)."""
    lines = header_lines(p)
    cols, rows = table(p, top)
    rows = [r[:1] + [r[1][:28]] + r[2:] for r in rows]
    widths = [max(len(c), *(len(r[k]) for r in rows)) if rows else len(c) for k, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(c.rjust(w) if k not in (1, 2) else c.ljust(w)
                                  for k, (c, w) in enumerate(zip(cells, widths)))
    lines += ["", fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    if top and top < len(p.layers):
        lines.append(top_line(p, len(rows)))
    lines += [""] + memory_lines(p)
    return "\n".join(lines) + "\n"


def analyze_training(step, imported: Graph, model_name: str, loss: str, optimizer: str) -> TrainProfile:
    """The per-layer and memory view of a planned ``TrainingStep``."""
    from convc.passes.macs import op_costs
    g = step.graph
    costs = op_costs(imported)
    forward = set(step.forward_ops)
    position = {name: i for i, name in enumerate(step.forward_ops)}.__getitem__
    per: dict[str, dict[str, Any]] = {}
    for name in step.forward_ops:
        op = g.op(name)
        per[name] = {"op": op.kind.value, "shape": g.tensor(op.outputs[0]).shape,
                     "fwd": costs[name].macs if name in costs else 0, "bwd": 0, "saved": set(), "params": set()}
    for op in step.plan.order:
        layer, phase = step.owner(op)
        if phase != "backward" or layer not in per:
            continue
        d = op_def(op.kind)
        if d.macs:
            per[layer]["bwd"] += d.macs(op.attrs, [g.tensor(t).type for t in op.inputs],
                                        [g.tensor(t).type for t in op.outputs])
        for t in map(step.unviewed, op.inputs):  # a 1-D window's 2-D view saves what it views
            producer = g.producer(t)
            if producer is not None and producer.name in forward:
                per[producer.name]["saved"].add(t)
            elif t == step.x:
                per[min((r.name for r in step.readers(t) if r.name in forward), key=position)]["saved"].add(t)
    for p in step.params:
        readers = [r.name for r in step.readers(p) if r.name in forward]
        if readers:
            per[readers[0]]["params"].add(p)
    layers = []
    for name, d in per.items():
        params = d["params"]
        layers.append(TrainLayer(
            name, d["op"], d["shape"], d["fwd"], d["bwd"], sum(g.tensor(t).nbytes for t in d["saved"]),
            sum(g.tensor(p).nbytes for p in params), sum(g.tensor(step.grads[p]).nbytes for p in params),
            sum(g.tensor(s).nbytes for p in params for s in step.state.get(p, []))))
    mem = step.plan.memory
    saved = {t for d in per.values() for t in d["saved"]}
    io = [step.x, step.labels, step.loss]
    memory = TrainMemory(
        sum(g.tensor(p).nbytes for p in step.params),
        sum(g.tensor(s).nbytes for p in step.params for s in step.state.get(p, [])),
        sum(g.tensor(r).nbytes for r in step.running),
        sum(g.tensor(step.grads[p]).nbytes for p in step.params),
        sum(g.tensor(t).nbytes for t in saved),
        mem.total_activation_bytes, mem.lower_bound_bytes, 0, sum(g.tensor(t).nbytes for t in io))
    return TrainProfile(model_name, g.tensor(step.x).shape[0], loss, optimizer, layers, memory)


def profile_training(model: Any, batch: int | None = None, *, loss: str = "cross_entropy", optimizer: Any = None,
                     measure: bool = False, repeats: int = 10, seed: int = 0, progress: Any = None) -> TrainProfile:
    """Profile the training step of an ONNX model (path, bytes, proto), a Graph or a convc.nn module
    at batch size ``batch`` (default: the model's, or 1 when it is symbolic); ``progress`` receives a
    line per phase (building, compiling and timing the step)."""
    say = progress or (lambda _: None)
    from pathlib import Path

    from convc.compiler import load_graph
    from convc.driver import compile_bound
    from convc.optim import SGD
    from convc.options import resolve_options
    from convc.passes.autodiff.training import build_training
    optimizer = optimizer if optimizer is not None else SGD(0.01)
    if hasattr(model, "to_graph"):
        raise TypeError("profile a convc.nn module through its graph: convc.profile(model.to_graph(shape), train=True)")
    name = Path(model).name if isinstance(model, (str, Path)) else getattr(model, "name", "") or "model"
    imported = load_graph(str(model) if isinstance(model, Path) else model, batch)
    say("building the training step (autodiff, loss, optimizer, memory plan)")
    step = build_training(imported, loss=loss, optimizer=optimizer, seed=seed)
    state = {n: np.array(v, copy=True) for n, v in step.initial.items()}
    state[step.lr] = np.array([optimizer.lr], np.float32)
    say("compiling the training step" + (" with per-kernel timers" if measure else ""))
    native = compile_bound(step.plan, state, resolve_options(threads=1, instrument=measure), progress)
    result = analyze_training(step, imported, name, loss, repr(optimizer))
    result.memory = TrainMemory(**{**asdict(result.memory), "arena_bytes": native.arena_bytes})
    if measure:
        say(f"timing {max(1, repeats)} steps")
        _measure(result, step, native, repeats, seed)
    return result


def _measure(result: TrainProfile, step, native, repeats: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = step.graph
    x = rng.standard_normal(g.tensor(step.x).shape).astype(np.float32)
    out_shape = g.tensor(step.logits).shape
    labels = (rng.integers(0, out_shape[1], out_shape[0]) if g.tensor(step.labels).dtype == np.int64
              else rng.uniform(0, 1, out_shape).astype(np.float32))
    feeds = {step.x: x, step.labels: labels}
    native.run(feeds)  # first touch of the arena
    owner = {op.name: step.owner(op) for op in step.plan.order}
    runs, totals = [], []
    for _ in range(max(1, repeats)):
        times = native.run_timed(feeds)[1]
        per: dict[tuple[str, str], float] = {}
        for op_name, s in times.items():
            key = owner.get(op_name, ("step", "update"))
            per[key] = per.get(key, 0.0) + s
        runs.append(per)
        totals.append(sum(times.values()))
    keys = {k for r in runs for k in r}
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    result.layers = [TrainLayer(**{**{f.name: getattr(l, f.name) for f in l.__dataclass_fields__.values()},
                                   "seconds": {ph: med.get((l.name, ph), 0.0) for ph in ("forward", "backward", "update")}})
                     for l in result.layers]
    result.loss_seconds = med.get(("loss", "loss"), 0.0)
    result.extra_seconds = {ph: s for (layer, ph), s in med.items() if layer == "step"}
    result.step_seconds = statistics.median(totals)

