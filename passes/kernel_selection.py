"""Kernel selection: record on every Conv the algorithm the codegen runs it with.

The one place a conv's algorithm is decided (codegen/kernels/conv.py dispatches on
``ConvAttrs.algorithm`` and never re-decides). It runs last among the rewrites, once layout
(passes/layout.py) and im2col lowering (passes/im2col.py) have rewritten the convs they take, both
with the predicates below, so the choice reads the final graph:

    channels last (layout.py) ........... DEPTHWISE_NHWC or IMPLICIT_GEMM_NHWC
    spatial rank 3+ ..................... DIRECT_ND
    1x1, stride 1, unpadded, constant W . POINTWISE, or IM2COL_FUSED when it reads an Im2Col's
                                          output that nothing else reads (im2col.py's lowering)
    depthwise ........................... DEPTHWISE
    anything else ....................... IM2COL_GEMM (im2col in the kernel; plain loops when W is
                                          fed at run time)

A training plan (``runtime_weights=True``) sends every conv whose weight is not a compile-time
constant (parameters, run-time inputs) to RUNTIME_WEIGHTS.

Not yet here (issue 14):
- Whether an IM2COL_FUSED conv really gathers in the kernel also depends on the thread count
  (enough row blocks for every thread: codegen/kernels/conv.py ``gathers_in_kernel``), which the
  pipeline does not receive yet. Once it does (one CompileOptions passed down), the fusion can be a
  rewrite here: the conv reads X with its own window and the Im2Col op, its arena buffer and
  passes/memory.py's liveness case for it go away.
- 1-D convs still run as 2-D ones inside the codegen (``as_2d``, ``spatial_2d`` in
  codegen/kernels/conv.py): the training kernels (conv_grad.py) on graphs that skip this pipeline
  use them too, and a rewrite with Reshape views would add a copy where a 1-D conv writes a graph
  output.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from convc.errors import CompileError
from convc.ir import Graph, Op, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, channels, is_depthwise, is_pointwise

A = ConvAlgorithm


def has_constant_weights(g: Graph, op: Op) -> bool:
    """W is a constant of the graph (its data may be packed at compile time)."""
    return g.tensor(op.inputs[1]).kind is TensorKind.CONSTANT


def depthwise(g: Graph, op: Op) -> bool:
    """One input and one output channel per group, in the conv's layout."""
    return is_depthwise(op.attrs, *channels(op.attrs, g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape))


def channels_last_candidate(g: Graph, op: Op) -> bool:
    """A conv the channels-last kernels run (passes/layout.py converts these): 2-D, float32, constant
    W, plain (one group) or depthwise, not already a GEMM over an Im2Col's output."""
    if op.kind is not OpKind.CONV or op.attrs.channels_last or op.attrs.spatial_rank != 2:
        return False
    producer = g.producer(op.inputs[0])
    if producer is not None and producer.kind is OpKind.IM2COL:
        return False
    if g.tensor(op.inputs[0]).dtype != np.float32 or not has_constant_weights(g, op):
        return False
    return op.attrs.group == 1 or depthwise(g, op)


def im2col_candidate(g: Graph, op: Op) -> bool:
    """A channels-first 1-D or 2-D conv with constant W that is neither pointwise nor depthwise:
    passes/im2col.py lowers these to Im2Col + a pointwise conv."""
    return (op.kind is OpKind.CONV and not op.attrs.channels_last and op.attrs.spatial_rank in (1, 2)
            and not is_pointwise(op.attrs) and has_constant_weights(g, op) and not depthwise(g, op))


def gathers_im2col(g: Graph, op: Op) -> bool:
    """A pointwise conv that can build its input, the output of an Im2Col op, itself block by block:
    nothing else reads that im2col matrix (so it need never exist in full)."""
    col = op.inputs[0]
    src = g.producer(col)
    return src is not None and src.kind is OpKind.IM2COL and col not in g.outputs and len(g.consumers(col)) == 1


def conv_algorithm(g: Graph, op: Op, runtime_weights: bool = False) -> ConvAlgorithm:
    a = op.attrs
    w = g.tensor(op.inputs[1])
    if runtime_weights and w.kind is not TensorKind.CONSTANT:
        return A.RUNTIME_WEIGHTS
    if a.channels_last:
        if depthwise(g, op):
            return A.DEPTHWISE_NHWC
        if a.group == 1 and w.data is not None and a.spatial_rank == 2:
            return A.IMPLICIT_GEMM_NHWC
        raise CompileError(f"node {op.name!r} (Conv): a channels-last conv that is not depthwise needs a 2-D kernel, "
                           f"one group and constant weights (passes/layout.py converts only those), got a "
                           f"{a.spatial_rank}-D kernel, group={a.group}, "
                           f"{'constant' if w.data is not None else 'run-time'} weights")
    if a.spatial_rank > 2:
        return A.DIRECT_ND
    if is_pointwise(a) and w.data is not None:
        return A.IM2COL_FUSED if gathers_im2col(g, op) else A.POINTWISE
    if depthwise(g, op):
        return A.DEPTHWISE
    return A.IM2COL_GEMM


def select_kernels(g: Graph, runtime_weights: bool = False) -> Graph:
    """Set ``algorithm`` on every Conv of ``g`` (in place; returns ``g``)."""
    for op in g.ops():
        if op.kind is OpKind.CONV:
            op.attrs = dataclasses.replace(op.attrs, algorithm=conv_algorithm(g, op, runtime_weights))
    return g


def select_training_kernels(g: Graph) -> Graph:
    """select_kernels for a plan run by the training emitter: weights not constant are read at run time."""
    return select_kernels(g, runtime_weights=True)
