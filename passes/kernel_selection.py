"""Kernel selection: record on every Conv the algorithm the codegen runs it with.

The one place a conv's algorithm is decided (codegen/kernels/conv.py dispatches on
``ConvAttrs.algorithm`` and never re-decides). It runs last among the rewrites, once layout
(passes/layout.py) and im2col lowering (passes/im2col.py) have rewritten the convs they take, both
with the predicates below, so the choice reads the final graph:

    input scale (fusion.py's SE Mul) .... IMPLICIT_GEMM_NHWC (the only kernel that scales X)
    channels last (layout.py) ........... DEPTHWISE_NHWC, WINOGRAD_4X4 (3x3 stride 1 where
                                          ``winograd_algorithm`` measured it faster; WINOGRAD_2X2
                                          exists but is never faster here), DIRECT_FEW_CHANNELS
                                          (1-4 input channels where ``direct_few_channels``
                                          measured it faster) or IMPLICIT_GEMM_NHWC
    spatial rank 3+ ..................... DIRECT_ND
    IM2COL_FUSED ........................ kept: im2col lowering (passes/im2col.py) chose to let the
                                          conv gather its im2col blocks itself (thread count)
    1x1, stride 1, unpadded, constant W . POINTWISE (over an Im2Col op's output after lowering)
    depthwise ........................... DEPTHWISE
    anything else ....................... IM2COL_GEMM (im2col in the kernel; plain loops when W is
                                          fed at run time)

A training plan (``runtime_weights=True``) sends every conv whose weight is not a compile-time
constant (parameters, run-time inputs) to RUNTIME_WEIGHTS, and never picks Winograd or
DIRECT_FEW_CHANNELS.

1-D convs and pools reach this pass as 2-D ones (passes/conv1d.py; for training plans,
``select_training_kernels`` runs that rewrite first, on the gradient ops too).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from convc.passes.conv1d import windows_to_2d

from convc.errors import CompileError
from convc.ir import Graph, Op, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, channels, is_depthwise, is_pointwise
from convc.options import active_options

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


def winograd_candidate(g: Graph, op: Op) -> bool:
    """A conv the Winograd kernel (codegen/kernels/winograd.py) runs: channels last, 3x3, stride 1,
    dilation 1, one group, constant W (any padding)."""
    a = op.attrs
    return (a.channels_last and a.group == 1 and a.kernel_shape == (3, 3) and a.strides == (1, 1)
            and a.dilations == (1, 1) and g.tensor(op.inputs[1]).data is not None)


def winograd_algorithm(g: Graph, op: Op) -> ConvAlgorithm | None:
    """WINOGRAD_4X4 or None (the direct implicit GEMM) for a ``winograd_candidate``.

    Measured A/B (direct, F(2x2), F(4x4) alternating in one process, 3x3 pad 1 + bias + ReLU, on a
    2-core AVX2 EPYC shared with other jobs (load 2-9), so +-30% noise; benchmarks/winograd.py),
    speed of F(4x4) over direct at 1 / 2 threads, N x H x W x C -> M:
        1x56x56x64->64 2.4 / 3.1     1x28x28x128->128 4.2 / 2.8    1x14x14x256->256 1.3 / 1.3
        16x56x56x64->64 2.3 / 1.7    16x14x14x256->256 2.0 / 2.1   16x7x7x512->512 1.6 / 1.1
        16x32x32x16->16 1.4 / 1.5    16x16x16x64->64 4.5 / 3.7     1x224x224x64->64 1.8 / 2.2
        1x56x56x16->16 1.7 / 1.8     1x56x56x32->4 1.4 / 1.4       1x12x12x64->64 1.9 / 1.3
        1x8x8x256->256 1.8 / 1.3     2x7x7x512->512 1.4 / 1.6
        1x7x7x512->512 1.3 / 0.9     1x56x56x8->8 1.3 / 1.2        16x32x32x8->8 1.2 / 0.8
        1x56x56x3->24 0.9 / 0.6
    F(2x2) was at best level with F(4x4) and slower on most shapes, so it is not chosen by default.
    The rules are the losses: below 16 input channels the input transform's vectors run part
    empty and it costs more than the multiplies saved (3 slower, 8 mixed), and a map of fewer than
    8 tiles of 4x4 at batch 1 whose transformed weights (36 C M floats, 4x the direct conv's)
    outgrow the cache (over 16 MB: 512->512) streams them for too little work. Maps of fewer than 4
    tiles (a 4x4 map at batch 1-3) were not measured and stay direct."""
    x, y = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape  # channels last: N, H, W, C
    c, m = x[3], y[3]
    if c < 16 or m < 4:
        return None
    tiles = y[0] * -(-y[1] // 4) * -(-y[2] // 4)
    if tiles < 4 or tiles < 8 and 36 * c * m * 4 > 16 * 2**20:  # (below 4 tiles: not measured)
        return None
    return A.WINOGRAD_4X4


def direct_few_channels(g: Graph, op: Op) -> bool:
    """Whether a channels-last conv with constant W runs faster as DIRECT_FEW_CHANNELS (taps unrolled,
    codegen/kernels/conv_direct.py) than as the implicit GEMM.

    Measured A/B (implicit GEMM and direct alternating in one process, bias + ReLU unless said, on a
    2-core AVX2 EPYC shared with other jobs (load 4-6: medians +-30%); speed of direct over the
    implicit GEMM, median at 1 / 2 threads, N x H x W x C -> M kxk/stride:
        16x28x28x1->6 5x5/1 2.51 / 2.18    same, Tanh 1.67 / 1.63     1x28x28x1->6 5x5/1 1.40 / 1.42
        16x32x32x3->6 3x3/1 1.11 / 1.13
        1x224x224x3->16 3x3/2 1.81 / 1.71  1x224x224x3->32 3x3/2 1.54 / 1.21
        16x32x32x3->32 3x3/1 0.99 / 1.12   16x28x28x1->16 5x5/1 0.98 / 1.02
        16x32x32x3->64 3x3/1 0.77 / 0.88   1x224x224x3->64 7x7/2 0.45 / 0.49 (kernel rows looped)
        1x224x224x3->8 3x3/2 1.92 / 2.07   16x112x112x3->24 3x3/2 1.77 / 1.70
        16x56x56x2->12 3x3/2 1.09 / 1.18   1x64x64x4->4 3x3/1 1.40 / 1.43
        16x28x28x1->32 5x5/2 0.87 / 0.82
    LeNet-5 end to end (convc.models.lenet5, the same A/B): batch 16 1.45x / 1.47x, batch 1 1.14x / 1.30x.
    The direct kernel wins where the GEMM's vectors run part empty (M < 8) and on 3x3 strided stems,
    whose padded input copy and short K the GEMM pays per row (a 5x5/2 on one channel lost); with 16+ channels at stride 1 the
    GEMM's register tile is as good, and 64 channels or 147 taps (ResNet's 7x7 stem) lose."""
    a = op.attrs
    if not (a.channels_last and a.group == 1 and a.spatial_rank == 2 and g.tensor(op.inputs[1]).data is not None):
        return False
    x, y = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape  # channels last: N, H, W, C
    c, m = x[3], y[3]
    if c > 4:
        return False
    if a.kernel_shape[0] * a.kernel_shape[1] * c > 27:
        return False
    return m < 8 or (a.kernel_shape == (3, 3) and min(a.strides) >= 2 and m <= 32)


def conv_algorithm(g: Graph, op: Op, runtime_weights: bool = False, winograd: bool = True) -> ConvAlgorithm:
    a = op.attrs
    w = g.tensor(op.inputs[1])
    if runtime_weights and w.kind is not TensorKind.CONSTANT:
        return A.RUNTIME_WEIGHTS
    if a.input_scale:  # a fused squeeze-and-excitation scale (passes/fusion.py): only the implicit GEMM has it
        if not (a.channels_last and a.group == 1 and w.data is not None and a.spatial_rank == 2):
            raise CompileError(f"node {op.name!r} (Conv): a conv with an input scale runs channels last with one "
                               f"group and constant weights, got layout {a.layout}, group={a.group}")
        return A.IMPLICIT_GEMM_NHWC
    if a.channels_last:
        if depthwise(g, op):
            return A.DEPTHWISE_NHWC
        if winograd and winograd_candidate(g, op):
            choice = winograd_algorithm(g, op)
            if choice is not None:
                return choice
        if not runtime_weights and direct_few_channels(g, op):  # training keeps its algorithms
            return A.DIRECT_FEW_CHANNELS
        if a.group == 1 and w.data is not None and a.spatial_rank == 2:
            return A.IMPLICIT_GEMM_NHWC
        raise CompileError(f"node {op.name!r} (Conv): a channels-last conv that is not depthwise needs a 2-D kernel, "
                           f"one group and constant weights (passes/layout.py converts only those), got a "
                           f"{a.spatial_rank}-D kernel, group={a.group}, "
                           f"{'constant' if w.data is not None else 'run-time'} weights")
    if a.spatial_rank > 2:
        return A.DIRECT_ND
    if a.algorithm is A.IM2COL_FUSED and im2col_candidate(g, op):
        return A.IM2COL_FUSED  # im2col lowering's choice (passes/im2col.py), made for the compile's threads
    if is_pointwise(a) and w.data is not None:
        return A.POINTWISE
    if depthwise(g, op):
        return A.DEPTHWISE
    return A.IM2COL_GEMM


def select_kernels(g: Graph, runtime_weights: bool = False, winograd: bool | None = None) -> Graph:
    """Set ``algorithm`` on every Conv of ``g`` (in place; returns ``g``). ``winograd``: whether
    Winograd may be chosen; None: as the compile's options say (convc/options.py ``active_options``,
    default True)."""
    if winograd is None:
        options = active_options()
        winograd = options.winograd if options is not None else True
    for op in g.ops():
        if op.kind is OpKind.CONV:
            op.attrs = dataclasses.replace(op.attrs, algorithm=conv_algorithm(g, op, runtime_weights, winograd))
    return g


def select_training_kernels(g: Graph) -> Graph:
    """select_kernels for a plan run by the training emitter: weights not constant are read at run
    time, and no Winograd (the training kernels keep the direct algorithms). Training plans skip the
    inference pipeline, so their 1-D windows (forward ops and the conv and pool gradients) are made
    2-D here (passes/conv1d.py)."""
    return select_kernels(windows_to_2d(g), runtime_weights=True, winograd=False)
