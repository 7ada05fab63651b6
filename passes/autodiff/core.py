"""Reverse-mode differentiation of a Graph into ops of the same Graph.

``backward(g, seeds, wrt)`` walks the ops that lie between ``wrt`` and the seeded tensors in
reverse topological order. Each op's gradient rule (``GRADIENTS[kind]``, one module per op family
in this package) receives the gradients of the op's outputs and appends the ops computing the
gradients of the inputs that need one. A tensor read by several ops gets one gradient per read;
they are summed (one Sum op) once every reader has been processed, which reverse topological order
guarantees happens before the tensor's producer is visited.

A rule sees the op through ``Recompute.view`` (recompute.py): a BatchNorm's output, or its ReLU's or
ReLU6's, is read from a copy rebuilt in the backward rather than kept from the forward.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from convc.passes.autodiff.recompute import Recompute

from convc.errors import GraphError
from convc.ir import Graph, Op
from convc.ops import NoAttrs, OpKind

# rule(ctx, op, output gradients (None where an output has none)) -> one gradient (or None) per input
GradRule = Callable[["GradContext", Op, list], list]
GRADIENTS: dict[OpKind, GradRule] = {}


def gradient(*kinds: OpKind):
    """Register the gradient rule of ``kinds`` (one rule per kind; duplicates are an error)."""
    def deco(fn: GradRule) -> GradRule:
        for k in kinds:
            if k in GRADIENTS:
                raise RuntimeError(f"two gradient rules for {k.value}")
            GRADIENTS[k] = fn
        return fn
    return deco


class GradContext:
    """What a rule sees: the graph, which inputs need a gradient, and a way to append ops."""

    def __init__(self, g: Graph, requires: set[str]):
        self.g = g
        self.requires = requires
        self.current: Op | None = None
        self.recompute = Recompute(g)

    def needs(self, op: Op, i: int) -> bool:
        return op.inputs[i] in self.requires

    def emit(self, kind: OpKind, attrs: Any, inputs: Sequence[str], n_outputs: int | None = None) -> list[str]:
        """Append a backward op named after the forward op it differentiates; returns its outputs."""
        base = f"{self.current.name}.grad" if self.current is not None else "grad"
        op = self.g.add_op(kind, attrs, list(inputs), name=self.g.fresh_name(base))
        if self.current is not None:
            record_grad_of(self.g, op.name, self.current.name)
        return list(op.outputs)

    def emit1(self, kind: OpKind, attrs: Any, inputs: Sequence[str]) -> str:
        return self.emit(kind, attrs, inputs)[0]

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.g.tensor(tensor).shape


def record_grad_of(g: Graph, backward_op: str, forward_op: str) -> None:
    """``graph.metadata["grad_of"]``: backward op -> the forward op whose gradient it computes (the
    training profile attributes backward work and memory to layers with it). Copy-on-write, like
    the records of passes/rewrite.py."""
    grad_of = dict(g.metadata.get("grad_of", {}))
    grad_of[backward_op] = forward_op
    g.metadata["grad_of"] = grad_of


def requiring(g: Graph, wrt: set[str]) -> set[str]:
    """Tensors whose value depends on a tensor of ``wrt``."""
    out = set(wrt)
    for op in g.ops():
        if any(t in out for t in op.inputs):
            out.update(op.outputs)
    return out


def backward(g: Graph, seeds: dict[str, str], wrt: Sequence[str]) -> dict[str, str]:
    """Append the ops computing the gradient of every tensor in ``wrt``.

    ``seeds`` maps tensors to the (existing) tensors holding the loss's gradient with respect to
    them. Returns tensor -> gradient tensor for the tensors of ``wrt`` the seeds depend on."""
    requires = requiring(g, set(wrt))
    ctx = GradContext(g, requires)
    pending: dict[str, list[str]] = {t: [s] for t, s in seeds.items()}
    forward_ops = g.ops()  # fixed before any backward op is appended
    for op in reversed(forward_ops):
        if not any(t in requires for t in op.inputs):
            continue
        dys = [total(ctx, t, pending) for t in op.outputs]
        if all(d is None for d in dys):
            continue
        rule = GRADIENTS.get(op.kind)
        if rule is None:
            raise GraphError(f"node {op.name!r} ({op.kind.value}): convc has no gradient for {op.kind.value}")
        ctx.current = op
        dxs = rule(ctx, ctx.recompute.view(op, _emit_recompute(ctx)), dys)
        ctx.current = None
        for t, dx in zip(op.inputs, dxs):
            if dx is not None and t in requires:
                pending.setdefault(t, []).append(dx)
    return {t: d for t in wrt if (d := total(ctx, t, pending)) is not None}


def _emit_recompute(ctx: GradContext):
    def emit(forward_op: Op, kind: OpKind, attrs: Any, inputs: list[str]) -> str:
        op = ctx.g.add_op(kind, attrs, inputs, name=ctx.g.fresh_name(f"{forward_op.name}.recompute"))
        record_grad_of(ctx.g, op.name, forward_op.name)
        if forward_op.outputs[0] in ctx.requires:  # needs() asks about the copy a rule sees
            ctx.requires.add(op.outputs[0])
        return op.outputs[0]
    return emit


def total(ctx: GradContext, tensor: str, pending: dict[str, list[str]]) -> str | None:
    """The summed gradient of ``tensor`` (one Sum op when several readers contributed)."""
    parts = pending.get(tensor)
    if not parts:
        return None
    if len(parts) > 1:
        ctx.current = None
        s = ctx.g.add_op(OpKind.SUM, NoAttrs(), parts, name=ctx.g.fresh_name(f"{tensor}.grad_sum"))
        producer = ctx.g.producer(tensor)
        if producer is not None:
            record_grad_of(ctx.g, s.name, producer.name)
        parts[:] = [s.outputs[0]]
    return parts[0]
