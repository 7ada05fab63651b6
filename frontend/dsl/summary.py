"""``model.summary(input_shape)``: per-layer output shapes, parameters and MACs.

MACs follow the profile convention: ``op_def(kind).macs`` counts the multiply-accumulates of
Conv, Gemm and MatMul (batch included) and nothing for other ops. One row per built-in layer call
and per functional op outside a layer (``x + y``, ``nn.cat``), in execution order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from convc.ir import Graph, Op
from convc.ops import op_def

if TYPE_CHECKING:
    from convc.frontend.dsl.module import InputShape, Module


@dataclass(frozen=True)
class LayerSummary:
    name: str                      # dotted layer name, or the op name of a functional call
    type: str                      # layer class ("Conv2d") or function ("add")
    output_shape: tuple[int, ...]
    params: int                    # trainable parameters first read by this call
    macs: int


@dataclass(frozen=True)
class Summary:
    model: str
    input_shapes: tuple[tuple[int, ...], ...]
    layers: tuple[LayerSummary, ...]
    total_params: int     # every trainable parameter of the model, used or not
    buffer_elements: int  # non-trainable state (BatchNorm running statistics)
    total_macs: int

    def __str__(self) -> str:
        head = ("Layer (type)", "Output shape", "Params", "MACs")
        rows = [(f"{r.name} ({r.type})", str(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in self.layers]
        w = [max(len(x[i]) for x in [head] + rows) for i in range(4)]
        fmt = lambda x: f"{x[0]:<{w[0]}}  {x[1]:<{w[1]}}  {x[2]:>{w[2]}}  {x[3]:>{w[3]}}"  # noqa: E731
        rule = "=" * len(fmt(head))
        inputs = ", ".join(map(str, self.input_shapes))
        lines = [f"Model: {self.model}    input {inputs}", rule, fmt(head), rule]
        lines += [fmt(r) for r in rows]
        lines += [rule, f"Total params: {self.total_params:,}",
                  f"Non-trainable buffers: {self.buffer_elements:,}",
                  f"Total MACs: {self.total_macs:,}"]
        return "\n".join(lines)


def op_macs(g: Graph, op: Op) -> int:
    d = op_def(op.kind)
    if d.macs is None:
        return 0
    return int(d.macs(op.attrs, [t.type for t in g.op_inputs(op)], [t.type for t in g.op_outputs(op)]))


def summarize(model: Module, input_shape: InputShape) -> Summary:
    tracer = model.trace(input_shape)
    g = tracer.graph
    layers = tuple(LayerSummary(c.name, c.type, c.output_shape or (), c.params, sum(op_macs(g, g.op(o)) for o in c.ops))
                   for c in tracer.rows)
    return Summary(model=type(model).__name__,
                   input_shapes=tuple(g.tensor(n).shape for n in g.inputs),
                   layers=layers,
                   total_params=model.num_parameters(),
                   buffer_elements=sum(int(b.size) for b in model.named_buffers().values()),
                   total_macs=sum(op_macs(g, op) for op in g.ops()))
