"""im2col lowering: a general convolution becomes an explicit Im2Col op followed by a GEMM-shaped conv.

    Conv(X, W[M, Cg, k...], group, epilogue)
      -> Im2Col(X) = col[N, C * prod(k), *out]
      -> Conv(col, W.reshape(M, Cg * prod(k), 1, ...), kernel 1, stride 1, no pads, same group,
              same bias, same epilogue)

A 1x1, stride-1, unpadded conv already is a GEMM in the codegen (no im2col buffer) and is left as
it is. ``should_lower`` chooses per conv, so a faster direct kernel can keep the convs it handles.

A conv with enough row blocks to keep every thread busy is not lowered but gathers its im2col
matrix itself, a block of output rows at a time, in per-thread scratch that stays in L2
(ConvAlgorithm.IM2COL_FUSED, recorded here on the conv and kept by kernel selection): the
matrix never exists in full. With fewer blocks than that, the explicit Im2Col op parallelizes
better over its rows. The threads are the compile's (``CompileOptions.threads`` through
``convc.options.active_options``; all cores outside a compile, as ``resolve_options`` defaults).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from convc.passes.kernel_selection import im2col_candidate
from convc.passes.rewrite import add_const, move_before, record_origin

from convc.ir import Graph, Op
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs, is_pointwise
from convc.ops.im2col import Im2ColAttrs, block_rows
from convc.options import active_options, default_threads

Predicate = Callable[[Graph, Op], bool]


is_gemm_conv = is_pointwise  # a 1x1, stride-1, unpadded conv: its input already is the GEMM operand
# the default predicate: every 1-D or 2-D channels-first conv with constant weights that is neither
# pointwise nor depthwise (the codegen's direct kernels are faster for those)
is_general_conv = im2col_candidate


def compile_threads() -> int:
    """The threads of the compile this pass runs in."""
    options = active_options()
    return options.threads if options is not None else default_threads()


def gathers_in_kernel(g: Graph, conv: Op, threads: int) -> bool:
    """Whether ``conv`` (2-D, channels first) has at least two blocks of output rows per thread
    over its images and groups, so gathering im2col blocks inside the conv keeps every thread busy."""
    n, _, oh, ow = g.tensor(conv.outputs[0]).shape
    blocks = -(-oh // block_rows(oh, ow))
    return n * conv.attrs.group * blocks >= 2 * threads


def lower_im2col(g: Graph, should_lower: Predicate = is_general_conv, threads: int | None = None) -> Graph:
    """Lower the convs ``should_lower`` picks: IM2COL_FUSED where ``gathers_in_kernel``, else an
    explicit Im2Col op (``lower_conv``). ``threads`` None: ``compile_threads()``."""
    threads = compile_threads() if threads is None else threads
    moves = {}
    for op in g.ops():
        if op.kind is not OpKind.CONV or not should_lower(g, op):
            continue
        if op.attrs.spatial_rank == 2 and gathers_in_kernel(g, op, threads):
            op.attrs = dataclasses.replace(op.attrs, algorithm=ConvAlgorithm.IM2COL_FUSED)
        else:
            col = lower_conv(g, op)
            moves[op.name] = [col.name, col.outputs[0]]
    move_before(g, moves)
    return g


def lower_conv(g: Graph, conv: Op) -> Op:
    """Rewrite ``conv`` in place (it keeps its name, output and epilogue); returns the new Im2Col op."""
    a: ConvAttrs = conv.attrs
    w = g.tensor(conv.inputs[1]).data
    r = a.spatial_rank
    col = g.add_op(OpKind.IM2COL, Im2ColAttrs.of(a), [conv.inputs[0]], name=f"{conv.name}_im2col")
    record_origin(g, col.name, conv.name)
    w2 = w.reshape((w.shape[0], -1) + (1,) * r)  # row-major: channel order (c, taps), as Im2Col writes
    conv.attrs = ConvAttrs((1,) * r, (1,) * r, (0,) * (2 * r), (1,) * r, a.group, a.epilogue)
    g.set_inputs(conv, (col.outputs[0], add_const(g, f"{conv.name}_w_col", w2)) + conv.inputs[2:])
    return col
