"""Passes for plans that read the training state at run time (passes/pipeline.py's training variants).

The training step (passes/autodiff/training.py) and the eval forward on the training state take
the parameters, running statistics and optimizer state as inputs, in arrays the caller owns; the
step's update ops write their results over those inputs in place. These are the pieces of the
pipeline that differ for such plans: dropping the initial values so the code reads the state at
run time, ordering the updates last, and a memory plan that gives each update the bytes it replaces.
"""
from __future__ import annotations

from convc.passes.memory import MemoryPlan, plan_memory

from convc.errors import GraphError
from convc.ir import Graph, Op, TensorKind
from convc.ops import OpKind

UPDATES = frozenset({OpKind.SGD_UPDATE, OpKind.MOMENTUM_UPDATE, OpKind.ADAGRAD_UPDATE, OpKind.RMSPROP_UPDATE,
                     OpKind.ADAM_UPDATE})
# update ops and the bookkeeping that runs after them, in this order, at the end of the step
LATE = (OpKind.ALL_FINITE, OpKind.SGD_UPDATE, OpKind.MOMENTUM_UPDATE, OpKind.ADAGRAD_UPDATE,
        OpKind.RMSPROP_UPDATE, OpKind.ADAM_UPDATE, OpKind.BATCH_NORM_RUNNING_UPDATE, OpKind.STEP_INCREMENT)
_LATE_RANK = {k: i for i, k in enumerate(LATE)}


def update_targets(op: Op) -> dict[str, str]:
    """Output -> the state input whose bytes it overwrites, for the ops that update state in place
    (X and the optimizer state of an update; the running statistics; the step counter)."""
    if op.kind in UPDATES:
        return dict(zip(op.outputs, op.inputs[3:4] + op.inputs[5:]))
    if op.kind in (OpKind.BATCH_NORM_RUNNING_UPDATE, OpKind.STEP_INCREMENT):
        return dict(zip(op.outputs, op.inputs))
    return {}


def detach_state(g: Graph) -> Graph:
    """Drop the initial values the parameters and state carry: the code must read them at run time.
    (Kernels treat a tensor with data as a compile-time constant and may pack it into the code.)"""
    for t in g.tensors():
        if t.kind in (TensorKind.PARAMETER, TensorKind.STATE):
            t.data = None
    return g


def updates_last(g: Graph) -> list[Op]:
    """The graph's order with the updates and their bookkeeping moved to the end, in ``LATE``'s
    order: every update reads the finiteness check, and none may overwrite state a gradient still reads."""
    ops = g.ops()
    return [op for op in ops if op.kind not in _LATE_RANK] + \
        sorted((op for op in ops if op.kind in _LATE_RANK), key=lambda op: _LATE_RANK[op.kind])


def plan_updates_in_place(g: Graph, order: list[Op]) -> MemoryPlan:
    """Plan the arena, with every update output sharing the buffer of the input it replaces."""
    targets = {out: t for op in order for out, t in update_targets(op).items()}
    for out in targets:
        g.tensor(out).kind = TensorKind.STATE  # not an arena activation
    mem = plan_memory(g, order)
    for out, t in targets.items():
        if mem.buffers[t].kind != "input":
            raise GraphError(f"tensor {out!r} updates {t!r}, which is not an input of the training step")
        mem.buffers[out] = mem.buffers[t]
    return mem
