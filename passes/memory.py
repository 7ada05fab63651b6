"""Memory planning: where every tensor's bytes live.

Graph inputs and outputs live in the caller's arrays, constants in the constant table, and every
other activation in one arena. View ops (Reshape, Flatten, Identity, Dropout at inference) alias
their input instead of copying. Arena offsets come from liveness over the execution order and
greedy-by-size best fit: largest tensor first, placed in the smallest gap that fits among the
tensors whose lifetimes overlap it, 64-byte aligned, then a few repair rounds when that leaves the
arena above the liveness lower bound (``best_fit_repaired``). An elementwise op writes its output
in place of an input that dies at that op when both are arena tensors of the same size, so the two
share one slot (the codegen drops ``noalias`` from kernel arguments that share memory).

A Concat copies nothing when its inputs can be produced in place (``plan_concats``): each input is
placed at its slice of the Concat's output, so its producer writes straight into the concatenation
and the Concat emits no code (``MemoryPlan.concat_aliases``); an input that cannot be placed (a
graph input or constant, a tensor also needed elsewhere in a form its readers cannot take) is still
copied by the Concat kernel, into the same buffer. A slice along the outermost non-unit axis is a
contiguous run of the output (batch 1 channels-first, axis 0) and any producer can write it; any
other slice is ``rows`` runs ``stride`` floats apart (``View``), e.g. a channels-last channel
concat, and then every kernel that writes or reads that tensor must take a row stride
(``writes_strided``, ``reads_strided``). Nested Concats chain: a Concat placed in an outer Concat
places its own inputs in the outer buffer, so a DenseNet block lives in one buffer. That buffer's
rows get one cache line of padding when they are a multiple of 512 bytes and only stride-taking
kernels read it (``pad_rows``). Training steps keep their copies (``is_training_graph``).

The plan also carries the figures ``convc profile`` reports: the bytes of every arena tensor with
no reuse, the live bytes at each step and their maximum (a lower bound for any arena; sizes are
64-byte aligned as the planner places them), and the planned arena size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from convc.ir import Graph, Op, TensorKind
from convc.limits import check_bytes
from convc.ops import OpGroup, OpKind
from convc.ops.conv import ConvAlgorithm

import numpy as np

ALIGN = 64
# ops that may write their output over an input of the same size (element i reads only element i)
IN_PLACE = OpGroup.ELEMENTWISE - OpGroup.VIEW
CONCAT_IN_PLACE = True  # plan_concats on inference graphs (False: every Concat copies; for A/B timing)
# a Concat buffer whose rows are a multiple of ROW_PAD_MULTIPLE floats gets ROW_PAD more per row
ROW_PAD, ROW_PAD_MULTIPLE = 16, 128
# channels-last conv kernels that store output pixels a row stride (ldc) apart: the implicit GEMM
# (codegen/kernels/conv_nhwc.py) and Winograd at every tile size (codegen/kernels/winograd.py)
STRIDED_CONV_OUTPUT = frozenset(a for a in ConvAlgorithm
                                if a is ConvAlgorithm.IMPLICIT_GEMM_NHWC or a.name.startswith("WINOGRAD"))


@dataclass(frozen=True)
class Buffer:
    """Where a tensor's bytes live: ``kind`` is input, output, constant or arena; ``index`` is the
    position in the caller's input/output list, the constant table, or the arena byte offset."""
    kind: str
    index: int


@dataclass(frozen=True)
class LiveRange:
    name: str
    nbytes: int
    first: int  # index of the defining op in the execution order
    last: int   # index of the last op that reads it


@dataclass
class MemoryPlan:
    arena_bytes: int
    buffers: dict[str, Buffer]
    live_ranges: list[LiveRange] = field(default_factory=list)  # one per arena slot (in-place groups merged)
    constants: list[str] = field(default_factory=list)  # constant table order
    in_place: dict[str, str] = field(default_factory=dict)  # output -> the dying input whose slot it takes
    total_activation_bytes: int = 0  # every arena tensor in its own buffer (no reuse)
    live_bytes: list[int] = field(default_factory=list)  # aligned bytes live during each op of the order
    placed: dict[str, Placement] = field(default_factory=dict)  # Concat inputs written in place
    concat_aliases: frozenset[str] = frozenset()  # Concat ops all of whose inputs are placed: no code
    padded: dict[str, View] = field(default_factory=dict)  # Concat buffers with padded rows (``pad_rows``)

    def view(self, name: str, size: int) -> View:
        """How tensor ``name`` (``size`` elements) is laid out at its buffer's address."""
        p = self.placed.get(name)
        v = p.view if p is not None else self.padded.get(name)
        return View(0, v.rows, v.run, v.stride) if v is not None else contiguous(size)

    @property
    def lower_bound_bytes(self) -> int:
        """No arena can be smaller than the most bytes live at one step."""
        return max(self.live_bytes, default=0)

    @property
    def saving_bytes(self) -> int:
        return self.total_activation_bytes - self.arena_bytes


@dataclass(frozen=True)
class View:
    """Where a tensor's elements sit in its storage root: ``rows`` runs of ``run`` contiguous floats,
    ``stride`` floats apart, the first ``offset`` floats into the root (row-major within the tensor)."""
    offset: int
    rows: int
    run: int
    stride: int

    @property
    def contiguous(self) -> bool:
        return self.rows == 1 or self.stride == self.run

    @property
    def extent(self) -> int:
        """Floats from the first element to one past the last."""
        return (self.rows - 1) * self.stride + self.run

    def normalized(self) -> "View":
        size = self.rows * self.run
        return View(self.offset, 1, size, size) if self.contiguous else self


@dataclass(frozen=True)
class Placement:
    """A tensor written straight into its slice of a Concat's output: ``root`` is the tensor whose
    arena slot holds the bytes (the outermost Concat of a chain), ``concat`` the op that needs no copy."""
    root: str
    view: View
    concat: str


def contiguous(size: int) -> View:
    return View(0, 1, size, size)


def element_strides(shape: tuple[int, ...], view: View) -> list[int]:
    """Element strides of a tensor of ``shape`` laid out as ``view`` (row-major when contiguous)."""
    strides, acc = [0] * len(shape), 1
    split = len(shape) if view.contiguous else None
    for d in range(len(shape) - 1, -1, -1):
        if split is None and acc == view.run:
            split, acc = d + 1, view.stride
        strides[d] = acc
        acc *= shape[d]
    if split is None and acc != view.run:
        raise ValueError(f"view {view} does not split shape {shape} into rows")
    return strides


def sub_view(out_shape: tuple[int, ...], out: View, axis: int, start: int, size: int) -> View | None:
    """The view of ``out[..., start:start + size, ...]`` (along ``axis``), or None when it is not
    ``rows`` runs of equal stride."""
    outer = int(np.prod(out_shape[:axis]))
    inner = int(np.prod(out_shape[axis + 1:]))
    chunk = out_shape[axis] * inner
    if out.contiguous:
        stride = chunk
    elif out.rows == outer and out.run == chunk:
        stride = out.stride
    else:
        return None
    return View(out.offset + start * inner, outer, size * inner, stride).normalized()


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def view_root(g: Graph, name: str) -> str:
    """The tensor whose storage ``name`` shares (itself unless it is the output of a view op)."""
    while name not in g.outputs:
        op = g.producer(name)
        if op is None or op.kind not in OpGroup.VIEW:
            break
        name = op.inputs[0]
    return name


def is_alias(g: Graph, op: Op) -> bool:
    """A view op whose output shares its input's storage: the codegen emits nothing for it."""
    return op.kind in OpGroup.VIEW and view_root(g, op.outputs[0]) != op.outputs[0]


def storage_root(g: Graph, name: str, placed: dict[str, Placement] | None = None) -> str:
    """The tensor whose arena slot holds ``name``'s bytes: its view root, or the Concat output it
    was placed in."""
    root = view_root(g, name)
    p = (placed or {}).get(root)
    return p.root if p is not None else root


def live_ranges(g: Graph, order: list[Op], placed: dict[str, Placement] | None = None,
                padded: dict[str, View] | None = None) -> list[LiveRange]:
    """Lifetime of every arena tensor (aliases and tensors placed in a Concat extend their root's);
    a Concat buffer with padded rows takes their whole extent."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, op in enumerate(order):
        for t in op.outputs:
            first.setdefault(storage_root(g, t, placed), i)
        for t in op.inputs:
            last[storage_root(g, t, placed)] = i
    out = []
    for name, start in first.items():
        t = g.tensor(name)
        if t.kind is not TensorKind.ACTIVATION or name in g.outputs:
            continue
        nbytes = padded[name].extent * t.dtype.itemsize if padded and name in padded else t.nbytes
        out.append(LiveRange(name, nbytes, start, max(start, last.get(name, start))))
    return out


def merge_in_place(g: Graph, order: list[Op], ranges: list[LiveRange],
                   placed: dict[str, Placement] | None = None) -> tuple[list[LiveRange], dict[str, str]]:
    """Let each elementwise output take the slot of an input that dies at its op (same size, both in
    the arena). Returns one range per slot, named after its first tensor, and output -> input taken.
    A tensor placed in a Concat neither takes a slot (its bytes are the Concat's) nor gives its own
    (its slice starts inside another tensor's slot)."""
    placed = placed or {}
    slot = {r.name: r.name for r in ranges}  # tensor -> the first tensor of its slot
    span = {r.name: r for r in ranges}       # slot -> its merged range
    taken: dict[str, str] = {}
    for i, op in enumerate(order):
        if op.kind not in IN_PLACE or len(op.outputs) != 1 or op.outputs[0] not in slot:
            continue
        out = op.outputs[0]
        for t in op.inputs:
            root = view_root(g, t)
            if root not in slot or root in placed:
                continue
            s = span[slot[root]]
            if s.last == i and s.nbytes == span[out].nbytes:
                merged = span.pop(out)
                span[slot[root]] = LiveRange(s.name, s.nbytes, s.first, max(s.last, merged.last))
                slot[out] = slot[root]
                taken[out] = root
                break
    return list(span.values()), taken


def live_bytes(ranges: list[LiveRange], steps: int) -> list[int]:
    """Aligned bytes of the ranges live during each step (an op's inputs and outputs both count)."""
    delta = [0] * (steps + 1)
    for r in ranges:
        delta[r.first] += align(r.nbytes)
        delta[r.last + 1] -= align(r.nbytes)
    out, acc = [], 0
    for d in delta[:steps]:
        acc += d
        out.append(acc)
    return out


def best_fit(ranges: list[LiveRange]) -> tuple[dict[str, int], int]:
    """Greedy by size, best fit: returns (offset per tensor, arena bytes)."""
    return greedy_by_size(ranges, best=True)


def first_fit(ranges: list[LiveRange]) -> tuple[dict[str, int], int]:
    """Greedy by size, first (lowest) gap that fits: the baseline best fit is measured against."""
    return greedy_by_size(ranges, best=False)


def by_size(ranges: list[LiveRange]) -> list[LiveRange]:
    return sorted(ranges, key=lambda r: (-r.nbytes, r.first, r.name))


def greedy_by_size(ranges: list[LiveRange], best: bool) -> tuple[dict[str, int], int]:
    return place_in_order(by_size(ranges), best)


def place_in_order(ranges: list[LiveRange], best: bool = True) -> tuple[dict[str, int], int]:
    """Place each range in turn at the smallest (``best``) or lowest gap that fits among the placed
    ranges whose lifetimes overlap it, or above them all; returns (offsets, arena bytes)."""
    placed: list[tuple[int, int, LiveRange]] = []  # (offset, size, range)
    offsets: dict[str, int] = {}
    for r in ranges:
        size = align(r.nbytes)
        busy = sorted((o, o + s) for o, s, q in placed if q.first <= r.last and r.first <= q.last)
        best_at, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_gap is None or (best and gap < best_gap)):
                best_at, best_gap = cursor, gap
            cursor = max(cursor, hi)
        offset = best_at if best_at is not None else cursor
        placed.append((offset, size, r))
        offsets[r.name] = offset
    return offsets, max((o + s for o, s, _ in placed), default=0)


def best_fit_repaired(ranges: list[LiveRange], bound: int, rounds: int = 64) -> tuple[dict[str, int], int]:
    """Greedy-by-size best fit, then repair rounds: while the arena is above ``bound`` (the liveness
    lower bound), move a range that reaches the top of the arena to the front of the placement
    order and place everything again; keep the smallest arena.

    Placing the largest tensors first puts every transient im2col buffer at offset 0, which pushes
    the long-lived residual tensors above them; promoting those lets them take the slots the
    buffers then avoid (ResNet-50: 14.5 MB -> 11.2 MB, the lower bound, in five rounds)."""
    order = by_size(ranges)
    offsets, arena = place_in_order(order)
    best = (offsets, arena)
    for _ in range(rounds):
        if arena <= bound:
            break
        position = {r.name: i for i, r in enumerate(order)}
        top = max(order, key=lambda r: (offsets[r.name] + align(r.nbytes), -position[r.name]))
        order = [top] + [r for r in order if r is not top]
        offsets, arena = place_in_order(order)
        if arena < best[1]:
            best = (offsets, arena)
    return best


def writes_strided(g: Graph, op: Op, t: str, view: View) -> bool:
    """``op``'s kernel can write its output ``t`` as ``view``, rows apart (codegen/kernels/shape.py
    for Concat and Transpose, codegen/kernels/resize.py; the channels-last implicit-GEMM and Winograd
    convs store pixel rows ``ldc`` apart when one row is one pixel's channels and no residual is read
    in C's layout, and so do the channels-last max and average pools)."""
    if op.kind in (OpKind.CONCAT, OpKind.TRANSPOSE, OpKind.RESIZE):
        return True
    if op.kind is OpKind.CONV and op.attrs.algorithm in STRIDED_CONV_OUTPUT:
        return not op.attrs.epilogue.residual and view.run == g.tensor(t).shape[-1]
    if op.kind in (OpKind.MAX_POOL, OpKind.AVERAGE_POOL) and op.attrs.channels_last:  # kernels/pool_nhwc.py
        return view.run == g.tensor(t).shape[-1]
    return False


# the broadcasting arithmetic kernel (codegen/kernels/elementwise.py emit_broadcast)
BROADCAST_ARITHMETIC = frozenset({OpKind.ADD, OpKind.SUM, OpKind.MUL, OpKind.SUB, OpKind.DIV, OpKind.MAX,
                                  OpKind.MIN, OpKind.PRELU, OpKind.POW})


def reads_strided(op: Op) -> bool:
    """``op``'s kernel reads its inputs at any ``View`` (codegen/kernels/shape.py, codegen/kernels/resize.py,
    the broadcasting arithmetic of codegen/kernels/elementwise.py: DenseNet's BatchNorm after a Concat)."""
    return op.kind in (OpKind.CONCAT, OpKind.TRANSPOSE, OpKind.RESIZE) or op.kind in BROADCAST_ARITHMETIC


def is_training_graph(g: Graph) -> bool:
    """A graph with parameters is a training step (or inference on the training state)."""
    return any(t.kind is TensorKind.PARAMETER for t in g.tensors())


def pad_rows(g: Graph, op: Op) -> View | None:
    """The padded layout of Concat ``op``'s output when it is the outermost of its chain, strided
    (rows of one pixel's channels, more than one row) and read only by kernels that take a stride,
    and its rows are a multiple of 512 bytes: 256-1024 channels last (DenseNet's blocks end there)
    put every row in the same few cache sets, and a Transpose or conv walking down a channel column
    then misses L1 and L2 on every row. One cache line more per row spreads them."""
    (y,) = op.outputs
    shape = g.tensor(y).shape
    outer = int(np.prod(shape[:op.attrs.axis]))
    chunk = int(np.prod(shape[op.attrs.axis:]))
    if outer == 1 or chunk % ROW_PAD_MULTIPLE or not all(reads_strided(c) for c in g.consumers(y)):
        return None
    return View(0, outer, chunk, chunk + ROW_PAD)


def plan_concats(g: Graph, order: list[Op]) -> tuple[dict[str, Placement], frozenset[str], dict[str, View]]:
    """Place Concat inputs in their slice of the Concat's output (see the module docstring).

    Concats are visited last first, so an outer Concat has placed an inner one (its own output)
    before the inner one places its inputs in the same root. An input is placed when it is an
    arena activation of its own (not a view, not a graph output, not placed already: a tensor in two
    Concats is copied into the second), listed once, produced by a kernel, and, when its slice is
    strided, its producer writes and all its readers read that stride. Returns the placements, the
    Concats left with nothing to copy and the outermost buffers given padded rows (``pad_rows``)."""
    placed: dict[str, Placement] = {}
    padded: dict[str, View] = {}
    aliases: set[str] = set()
    outputs = set(g.outputs)
    for op in reversed(order):
        if op.kind is not OpKind.CONCAT:
            continue
        (y,) = op.outputs
        ty = g.tensor(y)
        if ty.kind is not TensorKind.ACTIVATION or y in outputs or ty.dtype != np.float32 or \
                any(c.kind in OpGroup.VIEW for c in g.consumers(y)):
            continue
        outer = placed.get(y)
        root, vy = (outer.root, outer.view) if outer is not None else (y, pad_rows(g, op) or contiguous(ty.size))
        axis, start, n_placed = op.attrs.axis, 0, 0
        for x in op.inputs:
            tx = g.tensor(x)
            view = sub_view(ty.shape, vy, axis, start, tx.shape[axis])
            start += tx.shape[axis]
            producer = g.producer(x)
            if view is None or tx.kind is not TensorKind.ACTIVATION or x in outputs or x in placed or \
                    op.inputs.count(x) != 1 or producer is None or producer.kind in OpGroup.VIEW or \
                    tx.dtype != np.float32:
                continue
            if not view.contiguous and not (writes_strided(g, producer, x, view) and
                                            all(reads_strided(c) for c in g.consumers(x))):
                continue
            if any(c.kind in OpGroup.VIEW for c in g.consumers(x)):
                continue  # a view would read the slice as if it were contiguous on its own
            placed[x] = Placement(root, view, op.name)
            n_placed += 1
        if n_placed == len(op.inputs):
            aliases.add(op.name)
        if outer is None and n_placed and not vy.contiguous:
            padded[y] = vy
    return placed, frozenset(aliases), padded


def plan_memory(g: Graph, order: list[Op], in_place: bool = True, concats: bool | None = None) -> MemoryPlan:
    """``concats``: place Concat inputs in the Concat's output (default: for inference graphs; a
    training step keeps its copies, its backward kernels read every forward tensor contiguous)."""
    if concats is None:
        concats = CONCAT_IN_PLACE and not is_training_graph(g)
    placed, aliases, padded = plan_concats(g, order) if concats else ({}, frozenset(), {})
    tensors = live_ranges(g, order, placed, padded)
    ranges, taken = merge_in_place(g, order, tensors, placed) if in_place else (tensors, {})
    live = live_bytes(ranges, len(order))
    offsets, arena = best_fit_repaired(ranges, max(live, default=0))
    check_bytes(f"the activation arena of graph {g.name!r}", arena)  # before code generation, not at the first call
    for out, inp in taken.items():  # in order: an output's input may itself have taken a slot
        offsets[out] = offsets[view_root(g, inp)]
    for name, p in placed.items():
        offsets[name] = offsets[p.root] + p.view.offset * g.tensor(name).dtype.itemsize
    constants = [t.name for t in g.tensors() if t.kind is TensorKind.CONSTANT]
    buffers: dict[str, Buffer] = {}
    for i, n in enumerate(g.inputs):
        buffers[n] = Buffer("input", i)
    for i, n in enumerate(constants):
        buffers[n] = Buffer("constant", i)
    for i, n in enumerate(g.outputs):
        buffers.setdefault(n, Buffer("output", i))
    for n, off in offsets.items():
        buffers[n] = Buffer("arena", off)
    for t in g.tensors():
        if t.name not in buffers:
            buffers[t.name] = buffers.get(view_root(g, t.name), Buffer("arena", 0))
    for t in g.tensors():  # views of views resolve to their root's buffer
        root = view_root(g, t.name)
        if root != t.name:
            buffers[t.name] = buffers[root]
    return MemoryPlan(arena, buffers, ranges, constants, taken,
                      sum(g.tensor(n).nbytes for n in live_tensors(g, order)), live, placed, aliases, padded)


def live_tensors(g: Graph, order: list[Op]) -> list[str]:
    """Every arena tensor, each in its own buffer (the no-reuse figure counts Concat inputs too)."""
    return [r.name for r in live_ranges(g, order)]
