"""Layout: run 2-D convolutions, and the pooling and elementwise ops between them, channels last.

ONNX tensors are channels first (N, C, H, W). Channels last (N, H, W, C) lets a convolution read
its GEMM operand straight from the input, one pixel's channels being contiguous, instead of
gathering an im2col copy, and lets pooling and depthwise convs vectorize over channels.

The pass walks the ops in execution order and keeps, for every tensor it has produced channels
last, that channels-last twin:

- a convertible conv (2-D, constant weights, float32, plain or depthwise) reads the twins of its
  input and residual, creating ``Transpose`` ops for tensors that have none yet (the graph input);
- pooling (2-D windows, global), shape-preserving elementwise ops and Concat convert when their
  inputs already have twins, so a chain conv -> relu -> pool -> conv -> add stays channels last;
- so do reductions that keep the rank (ReduceMean/Max over channels in CBAM's spatial attention, over
  H and W where they are not a global pool) with their axes renumbered, and binary ops whose other
  operand is a twin broadcast along channels or pixels (the attention map times the features);
- Split and Slice of a twin cut it along the axis' new position (a channel split along the last axis), and
  ShuffleNet's channel shuffle of a twin (Reshape to (N, g, C/g, H, W), Transpose (0, 2, 1, 3, 4), Reshape
  back) becomes a permutation of its last axis: one copy between two views, or nothing when the reader is a
  plain conv, whose weight's input channels are permuted instead (``_fold_shuffle_into_convs``);
- a model's own permute to channels last of a twin is the twin, and its permute back to channels first has
  its input as twin (ConvNeXt's blocks; their Linear layers are 1x1 convs, passes/fusion.py);
- ResNeSt's radix view (N, rC, H, W) -> (N, r, C, H, W) of a twin is a view (N, H, W, r, C) of the twin, and
  the sums over r and the products with per-split attention weights run on it (``_radix_view``);
- every converted op keeps its name and writes its twin, and a ``Transpose`` back to channels
  first writes the original tensor, so ops left alone (Flatten, GlobalAveragePool, graph outputs)
  read exactly what they read before. Dead-code elimination then removes the transposes back
  that nothing reads: in a CNN only the model's edges keep one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from convc.passes.dce import eliminate_dead_code
from convc.passes.kernel_selection import channels_last_candidate
from convc.passes.rewrite import move_before, record_origin, single_consumer, take_output

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup, OpKind, layout
from convc.ops.resize import ResizeAttrs, axis_taps
from convc.ops.shape import ReshapeAttrs, TransposeAttrs

Predicate = Callable[[Graph, Op], bool]

POOLS = frozenset({OpKind.MAX_POOL, OpKind.AVERAGE_POOL, OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL})
QUANTIZE_DEQUANTIZE = frozenset({OpKind.QUANTIZE_LINEAR, OpKind.DEQUANTIZE_LINEAR})
SAME_SHAPE_BINARY = frozenset({OpKind.ADD, OpKind.MUL, OpKind.SUB, OpKind.DIV, OpKind.MAX, OpKind.MIN, OpKind.SUM})
REDUCTIONS = frozenset({OpKind.REDUCE_SUM, OpKind.REDUCE_MAX, OpKind.REDUCE_MIN, OpKind.REDUCE_PROD})
ALONG_AXIS = frozenset({OpKind.CONCAT, OpKind.SPLIT, OpKind.SLICE})  # the same op along the axis' new position


# the default predicate: the convs the channels-last kernels run (kernel_selection.py says which)
is_channels_last_conv = channels_last_candidate


def to_channels_last(g: Graph, convert_conv: Predicate = is_channels_last_conv) -> Graph:
    twins: dict[str, str] = {}     # channels-first tensor -> its channels-last twin
    before: dict[str, list[str]] = {}  # op -> nodes created to run just before it
    after: dict[str, list[str]] = {}   # op -> nodes created to run just after it

    def twin(t: str, reader: Op) -> str:
        if t not in twins:
            shape = g.tensor(t).shape
            if all(d == 1 for d in shape[2:]):  # (N, C, 1, 1) and (N, 1, 1, C) are the same bytes: a view
                tr = g.add_op(OpKind.RESHAPE, ReshapeAttrs(layout.to_channels_last(shape)), [t],
                              [g.fresh_name(f"{t}_nhwc")], name=f"{t}_to_nhwc")
            else:
                tr = g.add_op(OpKind.TRANSPOSE, TransposeAttrs(layout.channels_last_perm(len(shape))), [t],
                              [g.fresh_name(f"{t}_nhwc")], name=f"{t}_to_nhwc")
            record_origin(g, tr.name, reader.name)
            twins[t] = tr.outputs[0]
            before.setdefault(reader.name, []).extend([tr.name, tr.outputs[0]])
        return twins[t]

    shuffles: list[tuple[str, str, np.ndarray]] = []
    radix: dict[str, str] = {}  # (N, r, C, H, W) views of channels-first tensors -> their (N, H, W, r, C) twins
    for op in g.ops():
        if op.name not in g.nx:  # the middle or end of a channel shuffle rewritten at its first Reshape
            continue
        shuffle = _channel_shuffle(g, op, twins)
        if shuffle is not None:
            shuffles.append(_shuffle_channels_last(g, op, *shuffle, twins, before))
            continue
        if _explicit_permute(g, op, twins):
            continue
        if _radix_view(g, op, twins, radix, after):
            continue
        activations = _activation_inputs(g, op, twins, convert_conv)
        if activations is None:
            continue
        inputs = tuple(twin(t, op) if i in activations else t for i, t in enumerate(op.inputs))
        if op.kind in SAME_SHAPE_BINARY:  # per-channel constants broadcast channels last
            inputs = tuple(channels_last_constant(g, t) if i not in activations and g.tensor(t).size > 1
                           and g.tensor(t).kind is TensorKind.CONSTANT else t for i, t in enumerate(inputs))
        if op.kind is OpKind.CONV or op.kind in POOLS:  # the ops whose attributes say their layout
            op.attrs = dataclasses.replace(op.attrs, layout=layout.CHANNELS_LAST)
        elif op.kind in ALONG_AXIS:  # a channel split or concatenation is one along the last axis
            op.attrs = dataclasses.replace(op.attrs, axis=layout.channels_last_perm(4).index(op.attrs.axis))
        elif op.kind is OpKind.RESIZE:  # the same resize along H and W at their new positions
            op.attrs = resize_channels_last(op.attrs)
        elif op.kind in REDUCTIONS:  # the same axes at their new positions
            perm = layout.channels_last_perm(4)
            op.attrs = dataclasses.replace(op.attrs, axes=tuple(sorted(perm.index(a) for a in op.attrs.axes)),
                                           shape=layout.to_channels_last(op.attrs.shape))
        g.set_inputs(op, inputs)
        after[op.name] = []
        lasts = []
        for k, out in enumerate(op.outputs):
            last, back = _write_twin(g, op, k, out)
            twins[out] = last
            lasts.append(last)
            after[op.name] += [last, back]
        op.outputs = tuple(lasts)
    for shuffle in shuffles:
        _fold_shuffle_into_convs(g, *shuffle)
    move_before(g, before, after)  # a transpose runs where its data is hot, not after everything else
    return eliminate_dead_code(g)


def _write_twin(g: Graph, op: Op, k: int, out: str, perm: tuple[int, ...] | None = None) -> tuple[str, str]:
    """Make output ``k`` of ``op`` a new channels-last tensor (``out`` transposed by ``perm``, by default
    channels last) and have a transpose back write ``out`` from it; returns (the twin, the transpose
    back). The caller sets ``op.outputs``."""
    t = g.tensor(out)
    perm = perm or layout.channels_last_perm(len(t.shape))
    shape = tuple(t.shape[p] for p in perm)
    last = g.add_tensor(g.fresh_name(f"{out}_nhwc"), shape, t.dtype, TensorKind.ACTIVATION)
    g.nx.remove_edge(op.name, out)
    g.nx.add_edge(op.name, last.name, index=[k])
    if [d for d in shape if d != 1] == [d for d in t.shape if d != 1] and \
            [a for a in perm if t.shape[a] != 1] == sorted(a for a in perm if t.shape[a] != 1):
        # the axes longer than 1 keep their order (a pooled (N, C, 1, 1)): the same bytes either way, a view
        back = g.add_op(OpKind.RESHAPE, ReshapeAttrs(t.shape), [last.name], name=f"{out}_to_nchw")
    else:
        back = g.add_op(OpKind.TRANSPOSE, TransposeAttrs(tuple(int(a) for a in np.argsort(perm))), [last.name],
                        name=f"{out}_to_nchw")
    take_output(g, back, out)
    record_origin(g, back.name, op.name)
    return last.name, back.name


def _explicit_permute(g: Graph, op: Op, twins: dict[str, str]) -> bool:
    """A model's own permutes between layouts (ConvNeXt's x.permute(0, 2, 3, 1) ... permute(0, 3, 1, 2)): the
    permute to channels last of a tensor that has a twin is that twin (its readers read the twin, the
    Transpose goes), and the permute back to channels first of any 4-D tensor has that tensor as its twin
    (readers that convert read it; the Transpose stays for the others, dead-code elimination removes it
    when there are none). False: ``op`` is neither."""
    if op.kind is not OpKind.TRANSPOSE or len(g.tensor(op.inputs[0]).shape) != 4:
        return False
    (x,), (y,) = op.inputs, op.outputs
    if op.attrs.perm == layout.channels_last_perm(4) and x in twins and y not in g.outputs:
        for reader in g.consumers(y):
            g.set_inputs(reader, tuple(twins[x] if t == y else t for t in reader.inputs))
        g.remove_op(op)
        return True
    if op.attrs.perm == layout.channels_first_perm(4) and g.tensor(x).dtype == g.tensor(y).dtype:
        twins[y] = x
        return True
    return False


RADIX_PERM = (0, 3, 4, 1, 2)  # (N, r, C, H, W) -> (N, H, W, r, C): channels last, the channel axis seen as (r, C)


def _radix_view(g: Graph, op: Op, twins: dict[str, str], radix: dict[str, str], after: dict[str, list[str]]) -> bool:
    """ResNeSt's split attention on channels-last tensors: the view (N, rC, H, W) -> (N, r, C, H, W) of a twin
    is the view (N, H, W, r, C) of the twin; a reduction over r of such a view runs over its axis 3 (giving
    a twin again); a binary op of such a view and per-split weights (N or 1, r or 1, C or 1, 1, 1) reads
    the weights as (N or 1, 1, 1, r or 1, C or 1), the same bytes. False: ``op`` is none of these."""
    out = g.tensor(op.outputs[0]).shape if len(op.outputs) == 1 else ()
    if op.kind is OpKind.RESHAPE and op.inputs[0] in twins:
        xs = g.tensor(op.inputs[0]).shape
        if len(xs) != 4 or len(out) != 5 or out[:1] + out[3:] != xs[:1] + xs[2:] or out[1] * out[2] != xs[1]:
            return False
        inputs, perm = (twins[op.inputs[0]],), RADIX_PERM
        op.attrs = ReshapeAttrs(tuple(out[p] for p in RADIX_PERM))
    elif op.kind in REDUCTIONS and op.inputs[0] in radix and op.attrs.axes == (1,):
        inputs, perm = (radix[op.inputs[0]],), (RADIX_PERM if len(out) == 5 else layout.channels_last_perm(4))
        op.attrs = dataclasses.replace(op.attrs, axes=(3,), shape=tuple(out[p] for p in perm))
    elif op.kind in SAME_SHAPE_BINARY and len(op.inputs) == 2 and len(out) == 5 and \
            any(t in radix and g.tensor(t).shape == out for t in op.inputs):
        inputs = []
        for t in op.inputs:
            shape = g.tensor(t).shape
            if t in radix:
                inputs.append(radix[t])
            elif len(shape) == 5 and shape[3:] == (1, 1) and all(d in (1, o) for d, o in zip(shape, out)):
                twin_shape = tuple(shape[p] for p in RADIX_PERM)  # the same bytes: H and W are 1
                if g.tensor(t).kind is TensorKind.CONSTANT:
                    inputs.append(g.add_constant(g.fresh_name(f"{t}_nhwc"),
                                                 np.asarray(g.tensor(t).data).reshape(twin_shape)).name)
                else:
                    inputs.append(g.add_op(OpKind.RESHAPE, ReshapeAttrs(twin_shape), [t],
                                           name=f"{t}_to_nhwc").outputs[0])
            else:
                return False
        inputs, perm = tuple(inputs), RADIX_PERM
    else:
        return False
    g.set_inputs(op, inputs)
    last, back = _write_twin(g, op, 0, op.outputs[0], perm)
    (twins if len(perm) == 4 else radix)[op.outputs[0]] = last
    op.outputs = (last,)
    after[op.name] = [last, back]
    return True


def _channel_shuffle(g: Graph, op: Op, twins: dict[str, str]) -> tuple[Op, Op, int] | None:
    """ShuffleNet's channel shuffle of a twin, Reshape (N, C, H, W) -> (N, g, C/g, H, W), Transpose
    (0, 2, 1, 3, 4), Reshape back to (N, C, H, W) (torch's export, and ours of a channel Gather):
    (the transpose, the last reshape, g); None for anything else."""
    if op.kind is not OpKind.RESHAPE or op.inputs[0] not in twins:
        return None
    xs, ys = g.tensor(op.inputs[0]).shape, g.tensor(op.outputs[0]).shape
    if len(xs) != 4 or len(ys) != 5 or ys[:1] + ys[3:] != xs[:1] + xs[2:] or ys[1] * ys[2] != xs[1]:
        return None
    transpose = single_consumer(g, op.outputs[0])
    if transpose is None or transpose.kind is not OpKind.TRANSPOSE or transpose.attrs.perm != (0, 2, 1, 3, 4):
        return None
    back = single_consumer(g, transpose.outputs[0])
    if back is None or back.kind is not OpKind.RESHAPE or g.tensor(back.outputs[0]).shape != xs:
        return None
    return transpose, back, ys[1]


def _shuffle_channels_last(g: Graph, first: Op, transpose: Op, back: Op, groups: int, twins: dict[str, str],
                           before: dict[str, list[str]]) -> tuple[str, str, np.ndarray]:
    """The shuffle on the twin: a permutation of the last axis, (N, H, W, g, C/g) -> (N, H, W, C/g, g),
    one copy between two views. Returns (the twin it reads, the twin it writes, the source channel
    of each output channel) for ``_fold_shuffle_into_convs``."""
    x, out = first.inputs[0], back.outputs[0]
    n, c, h, w = g.tensor(x).shape
    readers = g.consumers(out)
    g.remove_op(first)
    g.remove_op(transpose)
    g.remove_op(back, remove_outputs=False)
    views = g.add_op(OpKind.RESHAPE, ReshapeAttrs((n, h, w, groups, c // groups)), [twins[x]],
                     name=f"{first.name}_nhwc")
    swap = g.add_op(OpKind.TRANSPOSE, TransposeAttrs((0, 1, 2, 4, 3)), views.outputs, name=f"{transpose.name}_nhwc")
    last = g.add_op(OpKind.RESHAPE, ReshapeAttrs((n, h, w, c)), swap.outputs, name=f"{back.name}_nhwc")
    to_nchw = g.add_op(OpKind.TRANSPOSE, TransposeAttrs(layout.channels_first_perm(4)), last.outputs,
                       name=f"{out}_to_nchw")
    take_output(g, to_nchw, out)
    for new, old in ((views, first), (swap, transpose), (last, back), (to_nchw, back)):
        record_origin(g, new.name, old.name)
    if readers:
        before.setdefault(readers[0].name, []).extend(
            [name for o in (views, swap, last, to_nchw) for name in (o.name, *o.outputs) if name != out])
    twins[out] = last.outputs[0]
    source = np.arange(c).reshape(groups, c // groups).T.reshape(-1)  # output channel j reads input source[j]
    return twins[x], last.outputs[0], source


def _fold_shuffle_into_convs(g: Graph, x: str, shuffled: str, source: np.ndarray) -> None:
    """A plain conv reading the shuffled twin reads the unshuffled one with its weight's input channels
    permuted instead (sum_j W[:, j] x[source[j]] = sum_i W'[:, i] x[i] with W'[:, source] = W): free at
    compile time. When every reader folds, dead-code elimination removes the shuffle's copy."""
    for conv in g.consumers(shuffled):
        if (conv.kind is not OpKind.CONV or conv.attrs.group != 1 or not conv.attrs.channels_last
                or conv.inputs.count(shuffled) != 1 or conv.inputs[0] != shuffled
                or g.tensor(conv.inputs[1]).kind is not TensorKind.CONSTANT):
            continue
        w = np.asarray(g.tensor(conv.inputs[1]).data)
        permuted = np.empty_like(w)
        permuted[:, source] = w
        weight = g.add_constant(g.fresh_name(f"{conv.inputs[1]}_unshuffled"), permuted).name
        g.set_inputs(conv, (x, weight) + conv.inputs[2:])


def _activation_inputs(g: Graph, op: Op, twins: dict[str, str], convert_conv: Predicate) -> set[int] | None:
    """Indices of the inputs ``op`` reads channels last once converted; None: leave ``op`` alone."""
    if op.kind in (OpKind.SPLIT, OpKind.SLICE):  # a cut of a twin along any axis: the same cut of the twin
        return {0} if len(g.tensor(op.inputs[0]).shape) == 4 and op.inputs[0] in twins else None
    if len(op.outputs) != 1:
        return None
    if op.kind is OpKind.CONV:
        if not convert_conv(g, op):
            return None
        last = len(op.inputs) - 1
        return ({0} | ({last - op.attrs.input_scale} if op.attrs.epilogue.residual else set())
                | ({last} if op.attrs.input_scale else set()))  # the residual, then the input scale
    rank4 = len(g.tensor(op.outputs[0]).shape) == 4
    if op.kind in POOLS:
        ok = rank4 and not op.attrs.channels_last and op.inputs[0] in twins
        return {0} if ok else None
    if op.kind is OpKind.CONCAT:
        ok = rank4 and all(t in twins for t in op.inputs)
        return set(range(len(op.inputs))) if ok else None
    if op.kind is OpKind.RESIZE:  # a spatial resize (YOLO's and UNet's upsampling): the same along H and W
        ok = rank4 and op.inputs[0] in twins and spatial_resize(g, op)
        return {0} if ok else None
    if op.kind in REDUCTIONS:  # keepdims: the result is an (N, C, H, W) tensor with some extents 1
        return {0} if rank4 and op.inputs[0] in twins else None
    if op.kind in QUANTIZE_DEQUANTIZE:  # per-tensor: elementwise in any layout (scale and zero point constants)
        source = op.inputs[0] in twins or (op.kind is OpKind.QUANTIZE_LINEAR and op.inputs[0] in g.inputs)
        ok = rank4 and source and g.tensor(op.inputs[1]).size == 1
        # a quantized tensor is only read channels last: its readers are per-tensor DequantizeLinear ops, which
        # convert too (the transposes back, to graph outputs or unconverted readers, move float32 values)
        ok = ok and (op.kind is OpKind.DEQUANTIZE_LINEAR or op.outputs[0] not in g.outputs and all(
            r.kind is OpKind.DEQUANTIZE_LINEAR and g.tensor(r.inputs[1]).size == 1 for r in g.consumers(op.outputs[0])))
        return {0} if ok else None
    if op.kind in OpGroup.UNARY or op.kind in SAME_SHAPE_BINARY:
        out = g.tensor(op.outputs[0]).type
        ok = rank4 and all(t in twins and g.tensor(t).type == out for t in op.inputs)
        if ok:
            return set(range(len(op.inputs)))
        if rank4 and op.kind in SAME_SHAPE_BINARY:
            return _per_channel_operands(g, op, twins)
    return None


def spatial_resize(g: Graph, op: Op) -> bool:
    """A Resize that leaves N and C alone: every image and channel is resized the same way, so it reads
    and writes channels last with its per-axis attributes permuted."""
    x = g.tensor(op.inputs[0]).shape
    return all(axis_taps(op.attrs, d, x[d]).is_identity for d in (0, 1))


def resize_channels_last(a: ResizeAttrs) -> ResizeAttrs:
    """``a`` (of a 4-D channels-first Resize) along the axes of the channels-last tensor."""
    perm = layout.channels_last_perm(4)
    roi = tuple(a.roi[p] for p in perm) + tuple(a.roi[4 + p] for p in perm) if a.roi else ()
    return dataclasses.replace(a, shape=tuple(a.shape[p] for p in perm), scales=tuple(a.scales[p] for p in perm),
                               roi=roi)


def _per_channel_operands(g: Graph, op: Op, twins: dict[str, str]) -> set[int] | None:
    """A binary op over a full activation and per-channel operands (an unfolded BatchNorm's scale and
    shift after a Concat, a squeeze-and-excitation scale): the operands of shape (N or 1, C or 1, 1, 1)
    that are constants or have twins broadcast the same channels last, as (N or 1, 1, 1, C or 1); so
    does any rank-4 twin that broadcasts against the output (a spatial attention map (N, 1, H, W)).
    Returns the inputs to read as twins (constants are permuted by ``channels_last_constant``); None
    when an operand is anything else (a full-size tensor without a twin)."""
    out = g.tensor(op.outputs[0]).shape
    full, twinned = False, set()
    for i, t in enumerate(op.inputs):
        tensor = g.tensor(t)
        shape = (1,) * (4 - len(tensor.shape)) + tuple(tensor.shape)
        if tensor.dtype != g.tensor(op.outputs[0]).dtype or len(tensor.shape) > 4:
            return None
        if shape == out and t in twins:
            full = True
            twinned.add(i)
        elif shape[2:] == (1, 1) and shape[0] in (1, out[0]) and shape[1] in (1, out[1]):
            if t in twins or (len(tensor.shape) == 4 and tensor.kind is not TensorKind.CONSTANT):
                twinned.add(i)  # a run-time scale without a twin (SE after a Linear) gets one: a view
            elif tensor.kind is not TensorKind.CONSTANT:
                return None
        elif t in twins and len(tensor.shape) == 4 and all(d in (1, o) for d, o in zip(shape, out)):
            twinned.add(i)
        else:
            return None
    return twinned if full else None


def channels_last_constant(g: Graph, name: str) -> str:
    """A per-channel constant of shape (N or 1, C or 1, 1, 1) (or fewer leading dims) as its
    channels-last twin (N or 1, 1, 1, C or 1): the same floats, in the same order."""
    t = g.tensor(name)
    data = np.asarray(t.data).reshape((1,) * (4 - len(t.shape)) + tuple(t.shape))
    return g.add_constant(g.fresh_name(f"{name}_nhwc"), np.ascontiguousarray(data.transpose(0, 2, 3, 1))).name

