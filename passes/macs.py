"""Compute and parameter counts: read-only analyses of a Graph.

MACs are the multiply-accumulates of the matrix products only (``op_def(kind).macs``: Conv, Gemm,
MatMul, and ConvTranspose once it exists), group-aware, every kernel tap counted including those
that fall in the padding, bias excluded. torchvision's published "GFLOPS" are these MACs. FLOPs,
where shown, are 2 x MACs.

Everything else is "other-op FLOPs", counted per output element unless stated:

    unary activations (Relu, Sigmoid, Tanh, Clip, HardSwish, ...)   1  (a transcendental counts as one)
    Add, Sub, Mul, Div, Max, Min, PRelu   1;   Sum of k inputs: k - 1
    BatchNormalization                    2  (x * s + t with s, t precomputed)
    LRN                                   2 * size + 3  (square and add per window channel; scale, power, divide)
    MaxPool, AveragePool, LpPool          kernel taps per output element
    GlobalAveragePool, GlobalMaxPool      1 per input element
    Softmax, LogSoftmax                   4  (max, exp, sum, divide or log)
    Resize                                nearest 0; linear 2 * 2^r, cubic 2 * 4^r (r = resized axes)
    Conv/ConvTranspose/Gemm bias or C     1;  fused residual add 1;  fused activation 1
    data movement (views, Concat, Transpose, Split, Pad, Slice, Im2Col)  0

An op none of these rules covers is *unmodelled*: its name is reported, never silently counted
as zero.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup, OpKind, TensorType, op_def

# ops that only move bytes: zero FLOPs by definition, not "unmodelled"
DATA_MOVEMENT = OpGroup.VIEW | {OpKind.CONCAT, OpKind.IM2COL, OpKind.TRANSPOSE, OpKind.SPLIT, OpKind.PAD,
                                OpKind.STRIDED_SLICE, OpKind.SLICE}


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    other_flops: int = 0
    unmodelled: tuple[str, ...] = ()  # "name (Kind)" of ops whose cost the counter does not know

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.other_flops + other.other_flops, self.unmodelled + other.unmodelled)

    @property
    def flops(self) -> int:
        """FLOPs of the matrix products: 2 x MACs."""
        return 2 * self.macs


@dataclass(frozen=True)
class Params:
    params: int = 0    # trainable values: weights, biases, BN scale and B
    bn_stats: int = 0  # BN running mean and var (and a BN scale/B another op carries, see count_params)

    def __add__(self, other: Params) -> Params:
        return Params(self.params + other.params, self.bn_stats + other.bn_stats)

    @property
    def total(self) -> int:
        return self.params + self.bn_stats


def _numel(t: TensorType) -> int:
    return int(np.prod(t.shape, dtype=np.int64))


def _epilogue_flops(op: Op, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    epi = op.attrs.epilogue
    n_bias = len(ins) - 2 - int(epi.residual)  # 1 when there is a bias (Conv B, Gemm C)
    return _numel(outs[0]) * (n_bias + int(epi.residual) + int(epi.activation is not None))


def _pool_flops(op: Op, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    return _numel(outs[0]) * int(np.prod(op.attrs.kernel_shape, dtype=np.int64))


def _per_output(n: int) -> Callable[[Op, Sequence[TensorType], Sequence[TensorType]], int]:
    return lambda op, ins, outs: n * _numel(outs[0])


def _resize_flops(op: Op, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    resized = sum(1 for a, b in zip(ins[0].shape, outs[0].shape) if a != b)
    taps = {"nearest": 0, "linear": 2 ** resized, "cubic": 4 ** resized}.get(op.attrs.mode)
    return 2 * taps * _numel(outs[0]) if taps is not None else 0


OtherFlops = Callable[[Op, Sequence[TensorType], Sequence[TensorType]], int]

OTHER_FLOPS: dict[OpKind, OtherFlops] = {
    **{k: _per_output(1) for k in OpGroup.ELEMENTWISE - OpGroup.VIEW},
    OpKind.SUM: lambda op, ins, outs: (len(ins) - 1) * _numel(outs[0]),
    OpKind.BATCH_NORM: _per_output(2),
    OpKind.LRN: lambda op, ins, outs: (2 * op.attrs.size + 3) * _numel(outs[0]),
    OpKind.MAX_POOL: _pool_flops,
    OpKind.AVERAGE_POOL: _pool_flops,
    OpKind.LP_POOL: _pool_flops,
    OpKind.GLOBAL_AVERAGE_POOL: lambda op, ins, outs: _numel(ins[0]),
    OpKind.GLOBAL_MAX_POOL: lambda op, ins, outs: _numel(ins[0]),
    OpKind.SOFTMAX: _per_output(4),
    OpKind.LOG_SOFTMAX: _per_output(4),
    OpKind.RESIZE: _resize_flops,
    **{k: _epilogue_flops for k in OpGroup.EPILOGUE},
    OpKind.MATMUL: _per_output(0),
}


def op_cost(g: Graph, op: Op) -> Cost:
    ins = [g.tensor(t).type for t in op.inputs]
    outs = [g.tensor(t).type for t in op.outputs]
    macs_fn = op_def(op.kind).macs
    macs = macs_fn(op.attrs, ins, outs) if macs_fn is not None else 0
    if op.kind in DATA_MOVEMENT:
        return Cost(macs)
    other = OTHER_FLOPS.get(op.kind)
    if other is None:  # MACs (if any) are still right; the rest is unknown and said so
        return Cost(macs, 0, (f"{op.name} ({op.kind.value})",))
    return Cost(macs, other(op, ins, outs))


def op_costs(g: Graph) -> dict[str, Cost]:
    """Cost of every op, in execution order."""
    return {op.name: op_cost(g, op) for op in g.ops()}


def graph_cost(g: Graph) -> Cost:
    return sum(op_costs(g).values(), Cost())


def _carried_affine(g: Graph, bn: Op) -> bool:
    """True when the BN's only reader is a Mul or Add by a per-channel constant: Caffe's BatchNorm
    layer has no affine part (its exported scale and B are fixed at 1 and 0) and its Scale layer
    becomes that Mul and Add, so the trainable affine lives there and PyTorch counts it once."""
    from convc.passes.bn_folding import channel_vector
    from convc.passes.rewrite import single_consumer
    reader = single_consumer(g, bn.outputs[0])
    if reader is None or reader.kind not in (OpKind.MUL, OpKind.ADD) or len(reader.inputs) != 2:
        return False
    other = reader.inputs[1] if reader.inputs[0] == bn.outputs[0] else reader.inputs[0]
    return g.tensor(other).kind is TensorKind.CONSTANT and channel_vector(g, other, bn.outputs[0]) is not None


def count_params(g: Graph) -> dict[str, Params]:
    """Parameters per op, in execution order: the float constants each compute op reads, each
    constant counted once (at its first reader). Data-movement ops own none. A BatchNormalization's
    running mean and var are ``bn_stats``, not parameters, so totals reconcile with PyTorch's
    ``sum(p.numel() for p in model.parameters())``; so are its scale and B when a following
    per-channel Mul/Add carries its affine (see ``_carried_affine``)."""
    seen: set[str] = set()
    out: dict[str, Params] = {}
    for op in g.ops():
        p = Params()
        if op.kind not in DATA_MOVEMENT:
            stats = set(op.inputs[3:5]) if op.kind is OpKind.BATCH_NORM else set()
            if op.kind is OpKind.BATCH_NORM and _carried_affine(g, op):
                stats |= set(op.inputs[1:3])
            for name in op.inputs:
                t = g.tensor(name)
                if name in seen or t.kind is not TensorKind.CONSTANT or t.dtype.kind != "f":
                    continue
                seen.add(name)
                p = p + (Params(0, t.size) if name in stats else Params(t.size, 0))
        out[op.name] = p
    return out


def total_params(g: Graph) -> Params:
    return sum(count_params(g).values(), Params())
