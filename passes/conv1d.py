"""1-D windows as 2-D ones: a 1-D Conv, MaxPool, AveragePool or Im2Col becomes the 2-D op over a height of 1.

    X (N, C, L) -> Reshape (N, C, 1, L) -> Conv kernel (1, k) -> (N, M, 1, OL) -> Reshape -> Y (N, M, OL)

so the codegen's channels-first conv and pool kernels are written for 2-D windows only. The
Reshapes are views (passes/memory.py gives them their input's storage): nothing is copied, except
into the caller's array where Y is a graph output (a view cannot alias an output). W (M, C/g, k)
becomes a constant (M, C/g, 1, k) when it is one (the kernels pack constant weights at compile
time) and goes through a Reshape view when it is fed at run time; a fused residual is viewed like
X; the bias is per channel and stays. Y keeps its name, so every reader (gradient ops included)
reads what it read before.

A channels-last op (N, L, C) is viewed as (N, 1, L, C) the same way (passes/layout.py converts only
2-D ops, but a graph may say so itself). Left alone: ConvTranspose, LpPool and the global pools,
whose kernels are rank-generic.
"""
from __future__ import annotations

from convc.passes.rewrite import add_const, move_before, record_origin, take_output

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpKind
from convc.ops.shape import ReshapeAttrs

KINDS = frozenset({OpKind.CONV, OpKind.MAX_POOL, OpKind.AVERAGE_POOL, OpKind.IM2COL})


def is_1d(op: Op) -> bool:
    """A 1-D op this pass rewrites."""
    return op.kind in KINDS and op.attrs.spatial_rank == 1


def unsqueezed(shape: tuple[int, ...], channels_last: bool = False) -> tuple[int, ...]:
    """(N, C, L) -> (N, C, 1, L); channels last, (N, L, C) -> (N, 1, L, C)."""
    at = 1 if channels_last else 2
    return shape[:at] + (1,) + shape[at:]


def windows_to_2d(g: Graph) -> Graph:
    """Rewrite every 1-D Conv, MaxPool, AveragePool and Im2Col of ``g`` in place (returns ``g``)."""
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    back: set[str] = set()  # the Reshapes back to 1-D this pass wrote
    for op in g.ops():
        if is_1d(op):
            rewrite(g, op, before.setdefault(op.name, []), after.setdefault(op.name, []), back)
    for name in back:  # one that only fed rewritten ops (which read its 2-D input instead) is dead
        view = g.op(name)
        if not g.consumers(view.outputs[0]) and view.outputs[0] not in g.outputs:
            g.remove_op(view)
            after = {k: [n for n in v if g.nx.has_node(n)] for k, v in after.items()}
    move_before(g, before, after)  # the views run next to their op, not after everything else
    return g


def rewrite(g: Graph, op: Op, before: list[str], after: list[str], back: set[str]) -> None:
    inputs = list(op.inputs)
    last = getattr(op.attrs, "channels_last", False)
    viewed = [0]
    if op.kind is OpKind.CONV:
        w = g.tensor(inputs[1])
        if w.kind is TensorKind.CONSTANT:
            inputs[1] = add_const(g, f"{w.name}_2d", w.data.reshape(unsqueezed(w.shape)))
        else:
            viewed.append(1)
        if op.attrs.epilogue.residual:
            viewed.append(len(inputs) - 1)
    for i in viewed:
        producer = g.producer(inputs[i])
        wanted = unsqueezed(g.tensor(inputs[i]).shape, last and i != 1)
        if producer is not None and producer.name in back and g.tensor(producer.inputs[0]).shape == wanted:
            # 1-D op -> 1-D op: read the other's 2-D output itself
            inputs[i] = producer.inputs[0]
            continue
        view = g.add_op(OpKind.RESHAPE, ReshapeAttrs(wanted), [inputs[i]],
                        [g.fresh_name(f"{inputs[i]}_2d")], name=g.fresh_name(f"{op.name}_input{i}_2d"))
        record_origin(g, view.name, op.name)
        before.extend([view.name, view.outputs[0]])
        inputs[i] = view.outputs[0]
    old = list(op.inputs)
    op.attrs = op.attrs.as_2d()
    g.set_inputs(op, tuple(inputs))
    for t in set(old) - set(inputs):  # the 1-D weight constant, unless another op reads it
        if g.tensor(t).kind is TensorKind.CONSTANT and not g.consumers(t) and t not in g.outputs:
            g.remove_tensor(t)
    (y,) = op.outputs
    t = g.tensor(y)
    y2 = g.add_tensor(g.fresh_name(f"{y}_2d"), unsqueezed(t.shape, last), t.dtype, TensorKind.ACTIVATION)
    g.nx.remove_edge(op.name, y)
    g.nx.add_edge(op.name, y2.name, index=[0])
    op.outputs = (y2.name,)
    to_1d = g.add_op(OpKind.RESHAPE, ReshapeAttrs(t.shape), [y2.name], name=g.fresh_name(f"{op.name}_1d"))
    take_output(g, to_1d, y)
    record_origin(g, to_1d.name, op.name)
    after.extend([y2.name, to_1d.name])
    back.add(to_1d.name)
