"""Compute and parameter counts: read-only analyses of a Graph.

MACs are the multiply-accumulates of the matrix products only (``op_def(kind).macs``: Conv, Gemm,
MatMul, and ConvTranspose once it exists), group-aware, every kernel tap counted including those
that fall in the padding, bias excluded. torchvision's published "GFLOPS" are these MACs. FLOPs,
where shown, are 2 x MACs.

Everything else is "other-op FLOPs": each op's ``OpDef.flops`` rule, written beside its reference
in convc/ops/<family>.py and counted per output element unless it says otherwise. In short:

    unary activations (Relu, Sigmoid, Tanh, Clip, HardSwish, ...)   1  (a transcendental counts as one)
    Add, Sub, Mul, Div, Max, Min, PRelu   1;   Sum of k inputs: k - 1
    BatchNormalization                    2  (x * s + t with s, t precomputed)
    LRN                                   2 * size + 3  (square and add per window channel; scale, power, divide)
    MaxPool, AveragePool, LpPool          kernel taps per output element
    GlobalAveragePool, GlobalMaxPool      1 per input element
    Softmax, LogSoftmax                   4  (max, exp, sum, divide or log)
    ReduceSum                             input elements - output elements
    Resize                                nearest 0; linear 2 * 2^r, cubic 2 * 4^r (r = resized axes)
    Conv/ConvTranspose/Gemm bias or C     1;  fused residual add 1;  fused activation 1
    data movement (views, Concat, Transpose, Split, Pad, Slice, Im2Col)  0

An op without a rule (``flops=None``: the training ops) is *unmodelled*: its name is reported,
never silently counted as zero.
"""
from __future__ import annotations

from dataclasses import dataclass

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup, OpKind, op_def

# ops that only move bytes (their FLOP rule is no_flops) and so own no parameters
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


def op_cost(g: Graph, op: Op) -> Cost:
    ins = [g.tensor(t).type for t in op.inputs]
    outs = [g.tensor(t).type for t in op.outputs]
    definition = op_def(op.kind)
    macs = definition.macs(op.attrs, ins, outs) if definition.macs is not None else 0
    if definition.flops is None:  # MACs (if any) are still right; the rest is unknown and said so
        return Cost(macs, 0, (f"{op.name} ({op.kind.value})",))
    return Cost(macs, definition.flops(op.attrs, ins, outs))


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
