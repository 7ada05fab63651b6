"""1-D windows as 2-D ones: a 1-D Conv, MaxPool, AveragePool or Im2Col, and the gradient ops of a
1-D Conv or pool (ConvGradInput, ConvGradWeight, MaxPoolGrad, AveragePoolGrad), become the 2-D op
over a height of 1.

    X (N, C, L) -> Reshape (N, C, 1, L) -> Conv kernel (1, k) -> (N, M, 1, OL) -> Reshape -> Y (N, M, OL)

so the codegen's channels-first conv and pool kernels, and the training gradient kernels, are
written for 2-D windows only. The Reshapes are views (passes/memory.py gives them their input's
storage): nothing is copied, except into the caller's array where Y is a graph output (a view
cannot alias an output). W (M, C/g, k) becomes a constant (M, C/g, 1, k) when it is one (the
kernels pack constant weights at compile time) and goes through a Reshape view when it is fed at
run time (a training parameter); a fused residual is viewed like X; the bias is per channel and
stays. Every tensor keeps its name and its 1-D shape, so every other reader reads what it read
before, and the parameters of a 1-D conv and their gradients keep the model's shapes: a weight
gradient dW (M, C/g, k) is the view of the kernel's (M, C/g, 1, k) result. The gradient ops read
dY (and X, W) through views like the forward op; their recorded shape (X's, or W's for the weight
gradient) gains the height of 1 too.

A channels-last op (N, L, C) is viewed as (N, 1, L, C) the same way (passes/layout.py converts only
2-D ops, but a graph may say so itself); weights are never channels last. Left alone:
ConvTranspose, LpPool and the global pools (and their gradients), whose kernels are rank-generic.
"""
from __future__ import annotations

import dataclasses

from convc.passes.rewrite import add_const, move_before, record_origin, take_output

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpKind
from convc.ops.shape import ReshapeAttrs
from convc.ops.window import WindowAttrs

FORWARD = frozenset({OpKind.CONV, OpKind.MAX_POOL, OpKind.AVERAGE_POOL, OpKind.IM2COL})
CONV_GRADIENTS = frozenset({OpKind.CONV_GRAD_INPUT, OpKind.CONV_GRAD_WEIGHT})
POOL_GRADIENTS = frozenset({OpKind.MAX_POOL_GRAD, OpKind.AVERAGE_POOL_GRAD})
KINDS = FORWARD | CONV_GRADIENTS | POOL_GRADIENTS


def window(op: Op) -> WindowAttrs | None:
    """The window an op of ``KINDS`` slides: its own, or a gradient's forward op's (None otherwise)."""
    if op.kind in FORWARD:
        return op.attrs
    if op.kind in CONV_GRADIENTS:
        return op.attrs.conv
    if op.kind in POOL_GRADIENTS:
        return op.attrs.pool
    return None


def is_1d(op: Op) -> bool:
    """A 1-D op this pass rewrites."""
    w = window(op)
    return w is not None and w.spatial_rank == 1


def unsqueezed(shape: tuple[int, ...], channels_last: bool = False) -> tuple[int, ...]:
    """(N, C, L) -> (N, C, 1, L); channels last, (N, L, C) -> (N, 1, L, C). A weight (M, C/g, k) ->
    (M, C/g, 1, k)."""
    at = 1 if channels_last else 2
    return shape[:at] + (1,) + shape[at:]


def windows_to_2d(g: Graph) -> Graph:
    """Rewrite every 1-D op of ``KINDS`` in ``g`` in place (returns ``g``)."""
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    back: set[str] = set()  # the Reshapes back to 1-D this pass wrote
    made: dict[tuple[str, tuple[int, ...]], str] = {}  # (1-D tensor, 2-D shape) -> its 2-D form, shared
    for op in g.ops():
        if is_1d(op):
            rewrite(g, op, before.setdefault(op.name, []), after.setdefault(op.name, []), back, made)
    for name in back:  # one that only fed rewritten ops (which read its 2-D input instead) is dead
        view = g.op(name)
        if not g.consumers(view.outputs[0]) and view.outputs[0] not in g.outputs:
            g.remove_op(view)
            after = {k: [n for n in v if g.nx.has_node(n)] for k, v in after.items()}
    move_before(g, before, after)  # the views run next to their op, not after everything else
    return g


def _weights(op: Op) -> tuple[set[int], bool]:
    """(indices of the inputs that are conv weights, whether the output is one): never channels last."""
    if op.kind is OpKind.CONV:
        return {1}, False
    if op.kind is OpKind.CONV_GRAD_INPUT:
        return {0}, False
    return set(), op.kind is OpKind.CONV_GRAD_WEIGHT


def _viewed(op: Op) -> list[int]:
    """The inputs read in their 2-D form: all but a Conv's bias, which is per channel."""
    if op.kind is OpKind.CONV:
        has_bias = len(op.inputs) - op.attrs.epilogue.residual == 3
        return [i for i in range(len(op.inputs)) if not (has_bias and i == 2)]
    return list(range(len(op.inputs)))


def _attrs_2d(op: Op, last: bool):
    a = op.attrs
    if op.kind in FORWARD:
        return a.as_2d()
    weight_out = _weights(op)[1]
    shape = unsqueezed(a.shape, last and not weight_out)
    if op.kind in CONV_GRADIENTS:
        return dataclasses.replace(a, conv=a.conv.as_2d(), shape=shape)
    return dataclasses.replace(a, pool=a.pool.as_2d(), shape=shape)


def _as_2d(g: Graph, op: Op, name: str, wanted: tuple[int, ...], before: list[str], back: set[str],
           made: dict[tuple[str, tuple[int, ...]], str], index: int) -> str:
    """``name`` in its 2-D form ``wanted``: a 2-D copy of a constant, the 2-D tensor a Reshape of this
    pass made it from (1-D op -> 1-D op), or a new Reshape view; made once per tensor and shape."""
    key = (name, wanted)
    if key in made:
        return made[key]
    t = g.tensor(name)
    producer = g.producer(name)
    if t.kind is TensorKind.CONSTANT:
        out = add_const(g, f"{name}_2d", t.data.reshape(wanted))
    elif producer is not None and producer.name in back and g.tensor(producer.inputs[0]).shape == wanted:
        out = producer.inputs[0]  # the other op's 2-D output itself
    else:
        view = g.add_op(OpKind.RESHAPE, ReshapeAttrs(wanted), [name], [g.fresh_name(f"{name}_2d")],
                        name=g.fresh_name(f"{op.name}_input{index}_2d"))
        record_origin(g, view.name, op.name)
        before.extend([view.name, view.outputs[0]])
        out = view.outputs[0]
    made[key] = out
    return out


def rewrite(g: Graph, op: Op, before: list[str], after: list[str], back: set[str],
            made: dict[tuple[str, tuple[int, ...]], str]) -> None:
    inputs = list(op.inputs)
    last = getattr(window(op), "channels_last", False)
    weight_in, weight_out = _weights(op)
    for i in _viewed(op):
        wanted = unsqueezed(g.tensor(inputs[i]).shape, last and i not in weight_in)
        inputs[i] = _as_2d(g, op, inputs[i], wanted, before, back, made, i)
    old = list(op.inputs)
    op.attrs = _attrs_2d(op, last)
    g.set_inputs(op, tuple(inputs))
    for t in set(old) - set(inputs):  # a 1-D constant no other op reads any more
        if g.tensor(t).kind is TensorKind.CONSTANT and not g.consumers(t) and t not in g.outputs:
            g.remove_tensor(t)
    (y,) = op.outputs
    t = g.tensor(y)
    y2 = g.add_tensor(g.fresh_name(f"{y}_2d"), unsqueezed(t.shape, last and not weight_out), t.dtype,
                      TensorKind.ACTIVATION)
    g.nx.remove_edge(op.name, y)
    g.nx.add_edge(op.name, y2.name, index=[0])
    op.outputs = (y2.name,)
    to_1d = g.add_op(OpKind.RESHAPE, ReshapeAttrs(t.shape), [y2.name], name=g.fresh_name(f"{op.name}_1d"))
    take_output(g, to_1d, y)
    record_origin(g, to_1d.name, op.name)
    after.extend([y2.name, to_1d.name])
    back.add(to_1d.name)
