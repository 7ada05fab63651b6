"""Epilogue fusion: work a Conv, ConvTranspose or Gemm (``OpGroup.EPILOGUE``) can do while its output
is still in registers.

Two rules, applied in execution order so that Conv -> Add -> Relu ends as one op:

- residual: ``Add(y, r)`` (or a two-input Sum) where ``y`` is the only use of the output of such an
  op with an empty epilogue and ``r`` has ``y``'s shape becomes that producer with ``r`` as its last
  input, computing ``y + r``;
- activation: an activation declared fusible (``OpDef.fusible``) reading the only use of a
  producer's output becomes its epilogue activation.

The producer's output must not be a graph output, since fusing would change the value stored there.
"""
from __future__ import annotations

import dataclasses

from convc.passes.rewrite import absorb, note, single_consumer

from convc.ir import Graph, Op
from convc.ops import OpGroup, OpKind, op_def

ADDITION = frozenset({OpKind.ADD, OpKind.SUM})


def _fusible_producer(g: Graph, tensor: str, reader: Op) -> Op | None:
    producer = g.producer(tensor)
    if producer is None or producer.kind not in OpGroup.EPILOGUE or single_consumer(g, tensor) is not reader:
        return None
    return producer


def fuse_activation(g: Graph, act: Op) -> bool:
    producer = _fusible_producer(g, act.inputs[0], act)
    if producer is None:
        p = g.producer(act.inputs[0])
        if p is not None and p.kind in OpGroup.EPILOGUE:
            note(g, act.name, f"not fused: the output of {p.name!r} is also read elsewhere (or is a graph output)")
        return False
    epi = producer.attrs.epilogue
    if epi.activation is not None:
        note(g, act.name, f"not fused: {producer.name!r} already applies {epi.activation.value}")
        return False
    epi = dataclasses.replace(epi, activation=act.kind, activation_attrs=act.attrs)
    absorb(g, producer, act, dataclasses.replace(producer.attrs, epilogue=epi))
    return True


def fuse_residual(g: Graph, add: Op) -> bool:
    if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return False
    out = g.tensor(add.outputs[0])
    if any(g.tensor(t).type != out.type for t in add.inputs):
        return False  # a broadcasting add is not a residual
    position = {op.name: i for i, op in enumerate(g.ops())}
    candidates = []
    for side in (0, 1):
        producer = _fusible_producer(g, add.inputs[side], add)
        if producer is not None and producer.attrs.epilogue.empty:
            candidates.append((position[producer.name], side, producer))
    if not candidates:
        return False
    _, side, producer = max(candidates, key=lambda c: c[:2])  # the later producer: its residual is ready
    epi = dataclasses.replace(producer.attrs.epilogue, residual=True)
    absorb(g, producer, add, dataclasses.replace(producer.attrs, epilogue=epi),
           producer.inputs + (add.inputs[1 - side],))
    return True


def fuse_epilogues(g: Graph) -> Graph:
    for op in g.ops():
        if op.name not in g.nx:  # already fused into its producer
            continue
        if op_def(op.kind).fusible:
            fuse_activation(g, op)
        elif op.kind in ADDITION:
            fuse_residual(g, op)
    return g
