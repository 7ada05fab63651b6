"""BatchNormalization folding.

At inference a BatchNormalization is the per-channel affine map ``y = x * s + t`` with
``s = scale / sqrt(var + eps)`` and ``t = B - mean * s``. When it reads the only output of a Conv,
ConvTranspose or Gemm whose weights (and bias) are constants, and its own scale, B, mean and var
are constants, the map folds into that producer: its weights are scaled by ``s`` along the output
channels and its bias becomes ``(bias - mean) * s + B``. Any other BatchNormalization with constant statistics becomes a
Mul and an Add with constant (C, 1, ..., 1) tensors, which the codegen runs as plain elementwise
kernels. Every BatchNormalization that does not fold gets a note saying why
(``graph.metadata["pass_notes"]``).

A Mul or Add of a constant that varies only along the channel axis folds the same way (``s = c``
or ``t = c``): Caffe exports BatchNorm+Scale as BatchNormalization, Mul and Add, and all three end
in the conv.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from convc.passes.rewrite import (
    absorb,
    add_const,
    is_constant,
    move_before,
    note,
    record_origin,
    single_consumer,
    take_output,
)

from convc.ir import Graph, Op
from convc.parallel import side_by_side
from convc.ops import NoAttrs, OpKind


def bn_affine(g: Graph, bn: Op) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 such that BatchNormalization(x) = x * s + t along axis 1."""
    scale, bias, mean, var = (g.tensor(t).data.astype(np.float64) for t in bn.inputs[1:])
    s = scale / np.sqrt(var + bn.attrs.epsilon)
    return s, bias - mean * s


Folded = tuple[tuple[str, ...], object]  # the producer's new inputs and attributes
PARALLEL_MIN_ELEMENTS = 1 << 18  # weights below this are scaled on the calling thread alone


def _scaled(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """w * scale in float64, rounded to w's dtype: the same bits as
    ``(w.astype(np.float64) * scale).astype(w.dtype)`` without the two full-size temporaries
    (numpy casts in small buffers). A large ``w`` is done in two halves (of its first axis) side by
    side: numpy's loops release the GIL, and the passes leave the other cores idle (ResNet-50's
    folds took 0.08 s on one core)."""
    out = np.empty(np.broadcast_shapes(w.shape, scale.shape), dtype=w.dtype)
    if out.size < PARALLEL_MIN_ELEMENTS or out.shape != w.shape or out.shape[0] < 2:
        np.multiply(w, scale, out=out, dtype=np.float64, casting="unsafe")
        return out

    def rows(lo: int, hi: int) -> None:
        s = scale[lo:hi] if scale.ndim == out.ndim and scale.shape[0] == out.shape[0] else scale
        np.multiply(w[lo:hi], s, out=out[lo:hi], dtype=np.float64, casting="unsafe")
    half = len(out) // 2
    side_by_side(lambda: rows(0, half), lambda: rows(half, len(out)), "convc-bn-fold")
    return out


def _fold_into_conv(g: Graph, conv: Op, s: np.ndarray, t: np.ndarray) -> Folded:
    """Conv weight (M, C/group, k...) scaled along M; bias (M,) becomes bias * s + t."""
    w = g.tensor(conv.inputs[1]).data
    w2 = _scaled(w, s.reshape((-1,) + (1,) * (w.ndim - 1)))
    b = g.tensor(conv.inputs[2]).data.astype(np.float64) if len(conv.inputs) > 2 else 0.0
    b2 = (b * s + t).astype(w.dtype)
    inputs = (conv.inputs[0], add_const(g, f"{conv.name}_w_bn", w2), add_const(g, f"{conv.name}_b_bn", b2))
    return inputs, conv.attrs


def _fold_into_gemm(g: Graph, gemm: Op, s: np.ndarray, t: np.ndarray) -> Folded:
    """Gemm Y (M, N) = alpha A' B' + beta C: BN on a rank-2 tensor normalizes axis 1 (N), so B' is
    scaled along N and C becomes (beta C) * s + t with beta = 1."""
    a = gemm.attrs
    w = g.tensor(gemm.inputs[1]).data
    dtype = w.dtype
    scale_n = s.reshape(-1, 1) if a.trans_b else s.reshape(1, -1)  # B is (N, K) when transposed
    w2 = _scaled(w, scale_n)
    c = a.beta * g.tensor(gemm.inputs[2]).data.astype(np.float64) if len(gemm.inputs) > 2 else 0.0
    c2 = np.ascontiguousarray(c * s + t).astype(dtype)
    inputs = (gemm.inputs[0], add_const(g, f"{gemm.name}_w_bn", w2), add_const(g, f"{gemm.name}_c_bn", c2))
    return inputs, dataclasses.replace(a, beta=1.0)


def _fold_into_conv_transpose(g: Graph, op: Op, s: np.ndarray, t: np.ndarray) -> Folded:
    """ConvTranspose weight (C, M/group, k...): output channel gi * M/group + j reads
    W[gi * C/group : (gi + 1) * C/group, j], so s scales axis 1 within each group; bias as the Conv's."""
    w = g.tensor(op.inputs[1]).data
    group = op.attrs.group
    c, mg = w.shape[:2]
    grouped = w.reshape((group, c // group, mg) + w.shape[2:])
    w2 = _scaled(grouped, s.reshape((group, 1, mg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    b = g.tensor(op.inputs[2]).data.astype(np.float64) if len(op.inputs) > 2 else 0.0
    b2 = (b * s + t).astype(w.dtype)
    inputs = (op.inputs[0], add_const(g, f"{op.name}_w_bn", w2), add_const(g, f"{op.name}_b_bn", b2))
    return inputs, op.attrs


# producer kind -> function making the producer's new constant inputs and attributes
FOLDERS: dict[OpKind, Callable[[Graph, Op, np.ndarray, np.ndarray], Folded]] = {
    OpKind.CONV: _fold_into_conv,
    OpKind.CONV_TRANSPOSE: _fold_into_conv_transpose,
    OpKind.GEMM: _fold_into_gemm,
}


def why_not_foldable(g: Graph, bn: Op) -> str | None:
    """None when ``bn`` folds into its producer; otherwise the reason, for the pass notes."""
    producer = g.producer(bn.inputs[0])
    if producer is None:
        return f"its input {bn.inputs[0]!r} is a graph input or constant, not a conv or gemm output"
    if producer.kind not in FOLDERS:
        return f"its input comes from {producer.kind.value} {producer.name!r}, not a conv or gemm"
    return _producer_problem(g, producer, bn)


def _producer_problem(g: Graph, producer: Op, reader: Op) -> str | None:
    if single_consumer(g, producer.outputs[0]) is not reader:
        return f"the output of {producer.name!r} is also read elsewhere (or is a graph output)"
    if not producer.attrs.epilogue.empty:
        return f"{producer.name!r} already applies {'+'.join(producer.attrs.epilogue.fused_names())} to its output"
    if not all(is_constant(g, w) for w in producer.inputs[1:]):
        return f"the weights or bias of {producer.name!r} are not constants"
    return None


def channel_vector(g: Graph, const: str, out: str) -> np.ndarray | None:
    """The constant ``const`` as one value per channel (axis 1) of ``out``, or None when it varies
    along any other axis or would broadcast ``out`` to a bigger shape."""
    c, shape = g.tensor(const).data, g.tensor(out).shape
    if c.ndim > len(shape) or len(shape) < 2:
        return None
    padded = (1,) * (len(shape) - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(padded) if i != 1) or padded[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (shape[1],))


def fold_channel_op(g: Graph, op: Op) -> bool:
    """Fold ``x * c`` or ``x + c`` (c constant per channel) into the conv or gemm producing ``x``."""
    if len(op.inputs) != 2:
        return False
    for side in (0, 1):
        x, c = op.inputs[side], op.inputs[1 - side]
        if not is_constant(g, c) or is_constant(g, x) or g.tensor(x).shape != g.tensor(op.outputs[0]).shape:
            continue
        v = channel_vector(g, c, x)
        producer = g.producer(x)
        if v is None or producer is None or producer.kind not in FOLDERS or _producer_problem(g, producer, op):
            continue
        s, t = (v, np.zeros_like(v)) if op.kind is OpKind.MUL else (np.ones_like(v), v)
        inputs, attrs = FOLDERS[producer.kind](g, producer, s, t)
        absorb(g, producer, op, attrs, inputs)
        return True
    return False


def fold_batch_norm(g: Graph) -> Graph:
    moves = {}
    for op in g.ops():
        if op.name not in g.nx:  # already folded into its producer
            continue
        if op.kind in (OpKind.MUL, OpKind.ADD):
            fold_channel_op(g, op)
        elif op.kind is OpKind.BATCH_NORM:
            fold_one(g, op, moves)
    move_before(g, moves)  # also moves the folded weights ahead, so the convs keep their place
    return g


def fold_one(g: Graph, bn: Op, moves: dict[str, list[str]]) -> None:
    if not all(is_constant(g, t) for t in bn.inputs[1:]):
        note(g, bn.name, "its scale, B, mean or var are not constants: kept as BatchNormalization")
        return
    s, t = bn_affine(g, bn)
    reason = why_not_foldable(g, bn)
    if reason is None:
        producer = g.producer(bn.inputs[0])
        inputs, attrs = FOLDERS[producer.kind](g, producer, s, t)
        absorb(g, producer, bn, attrs, inputs)
    else:
        note(g, bn.name, f"not folded ({reason}): runs as a per-channel Mul and Add")
        mul, add = _to_scale_shift(g, bn, s, t)
        moves[add.outputs[0]] = [mul.name, mul.outputs[0], add.name]  # where the BN was


def _to_scale_shift(g: Graph, bn: Op, s: np.ndarray, t: np.ndarray) -> tuple[Op, Op]:
    x = g.tensor(bn.inputs[0])
    shape = (-1,) + (1,) * (len(x.shape) - 2)
    s_name = add_const(g, f"{bn.name}_s", s.astype(x.dtype).reshape(shape))
    t_name = add_const(g, f"{bn.name}_t", t.astype(x.dtype).reshape(shape))
    out = bn.outputs[0]
    g.remove_op(bn, remove_outputs=False)
    mul = g.add_op(OpKind.MUL, NoAttrs(), [x.name, s_name], name=f"{bn.name}_mul")
    add = g.add_op(OpKind.ADD, NoAttrs(), [mul.outputs[0], t_name], name=f"{bn.name}_add")
    take_output(g, add, out)
    record_origin(g, mul.name, bn.name)
    record_origin(g, add.name, bn.name)
    return mul, add
