"""Recompute, rather than keep, the activations a BatchNormalization (and its ReLU or ReLU6) produces.

A Conv -> BatchNorm -> ReLU chain leaves three tensors of one size that the backward could read: the
conv's output X (BatchNormGrad needs it), the normalized Y and the activation's output A (the next
conv's weight gradient reads it, and ReLU's gradient reads it). Kept from the forward, Y or A lives
from the forward to the end of the backward. But Y = X s + (B - mean s) with s = scale invstd, per
channel, from X and the statistics BatchNormTrain saves, and A = clamp(Y): one elementwise pass
(BatchNormApply) rebuilds either bit for bit, just before the first backward op that reads it, and
it dies with that layer's backward. The saved activations drop to about one tensor per
Conv-BN-activation (its X) instead of two or three, for one extra elementwise pass per layer.

``Recompute(g)`` finds the candidates; ``view(op)`` gives a backward rule the op with each
candidate it reads replaced by the recomputed tensor (emitted on first use, so the schedule,
which follows the order ops were added in, places it where the backward first needs it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup, OpKind
from convc.ops.norm_grad import BatchNormApplyAttrs

# activation kind -> its clamp, for the activations BatchNormApply fuses
CLAMPS: dict[OpKind, Callable[[object], BatchNormApplyAttrs]] = {
    OpKind.RELU: lambda attrs: BatchNormApplyAttrs(0.0, float("inf")),
    OpKind.CLIP: lambda attrs: BatchNormApplyAttrs(float(attrs.min), float(attrs.max)),
}

# the ops whose gradient rules read the recomputable tensors they touch, and which ones (inputs, outputs): the
# weight gradients read the layer's input, ReLU's and Clip's gradients their output, max pooling's both. Other
# rules (Add, the average poolings, views) read no forward value: they see the op as it is and cost nothing.
READS: dict[OpKind, tuple[bool, bool]] = {
    **{k: (True, False) for k in OpGroup.MATMUL_LIKE | {OpKind.CONV_TRANSPOSE}},
    **{k: (False, True) for k in CLAMPS},
    OpKind.MAX_POOL: (True, True), OpKind.GLOBAL_MAX_POOL: (True, True),
}


class Recompute:
    """The tensors of ``g`` BatchNormApply can rebuild: a BatchNormTrain's Y, and the output of a
    ReLU or Clip reading it; each maps to (the BatchNormTrain op, the clamp, the op it stands for)."""

    def __init__(self, g: Graph):
        self.g = g
        self.sources: dict[str, tuple[Op, BatchNormApplyAttrs, Op]] = {}
        self.done: dict[str, str] = {}
        for op in g.ops():
            if op.kind is not OpKind.BATCH_NORM_TRAIN or len(op.inputs) > 4:
                continue
            y = op.outputs[0]
            if g.tensor(y).kind is TensorKind.ACTIVATION:
                self.sources[y] = (op, BatchNormApplyAttrs(), op)
            for reader in g.consumers(y):
                out = reader.outputs[0] if reader.outputs else None
                if reader.kind in CLAMPS and reader.inputs[0] == y and g.tensor(out).kind is TensorKind.ACTIVATION:
                    self.sources[out] = (op, CLAMPS[reader.kind](reader.attrs), reader)

    def tensor(self, name: str, emit: Callable[[Op, OpKind, object, list[str]], str]) -> str:
        """The recomputed copy of ``name`` (emitted the first time), or ``name`` itself."""
        if name not in self.sources:
            return name
        if name not in self.done:
            bn, clamp, stands_for = self.sources[name]
            x, scale, bias = bn.inputs[:3]
            _, mean, invstd = bn.outputs
            self.done[name] = emit(stands_for, OpKind.BATCH_NORM_APPLY, clamp, [x, scale, bias, mean, invstd])
        return self.done[name]

    def view(self, op: Op, emit: Callable[[Op, OpKind, object, list[str]], str]) -> Op:
        """``op`` as its gradient rule should see it: every recomputable tensor it reads or writes
        replaced by the recomputed copy (the forward op itself keeps its tensors)."""
        ins, outs = READS.get(op.kind, (False, False))
        touched = (op.inputs if ins else ()) + (op.outputs if outs else ())
        if not any(t in self.sources for t in touched):
            return op
        return dataclasses.replace(op, inputs=tuple(self.tensor(t, emit) for t in op.inputs) if ins else op.inputs,
                                   outputs=tuple(self.tensor(t, emit) for t in op.outputs) if outs else op.outputs)
