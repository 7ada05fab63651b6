"""bf16 precision: every Conv, ConvTranspose, Gemm and MatMul multiplies bf16 values, accumulating in float32.

Runs in the inference pipeline (passes/pipeline.py) after every rewrite but kernel selection, when
the compile's ``precision`` is "bf16" (convc/options.py); a float32 compile leaves the graph
untouched. Kernel selection sees the same convs either way (shapes, layouts, constant weights and
Im2Col producers are kept), so it makes the same choices; bf16 changes them only through
``winograd``'s default. For each such op, its two
multiplied operands (X and W, A and B; never the bias, which is added to the float32 sum):

- a constant is rounded to bf16 values (convc/ops/precision.py ``round_bf16``) here, at compile
  time, so the weights the kernels pack into the constant blob are bf16 values. They stay in
  float32 storage: convc's kernels multiply float32, and a product of two bf16 values is exact in
  float32, so a float32 FMA gives exactly the bf16 product ``vdpbf16ps`` gives, accumulated in
  float32. That is the portable path: on a CPU without AVX512_BF16 the results agree with a
  native-bf16 CPU up to float32 summation order.
- a tensor computed at run time is rounded by a ``RoundBF16`` op placed in front of its readers
  (one per tensor, shared by every conv/gemm that reads it). Why a separate op rather than fused
  where each kernel packs or reads its input: the readers are many kernels (implicit GEMM,
  depthwise, pointwise, Winograd, im2col, direct N-D, transposed, Gemm, MatMul), each with its own
  packing; one op keeps the rule in one place, and the plan, the profile and the memory planner
  see it (ARCHITECTURE.md: conversions are explicit ops). It costs one read and write of each conv
  input, small next to the conv. A residual Add or any other op that reads the same tensor still
  reads the float32 value: only products are bf16.
- a conv over an Im2Col (passes/im2col.py) has the Im2Col's input rounded instead of its k*k times
  larger output: Im2Col only copies values and writes zero padding, so rounding commutes with it.

The graph records ``metadata["precision"] = "bf16"``, which the compile cache's key hashes with the
graph (as it hashes the rounded weights and the RoundBF16 ops).

Native bf16: where ``avx512bf16`` is a feature of the target, the channels-last implicit-GEMM convs
run codegen/kernels/bf16_dense.py's ``vdpbf16ps`` kernel, which reads the same rounded values (the
high 16 bits of each float32 are its bf16 value); every other reader keeps this portable path.
"""
from __future__ import annotations

import numpy as np

from convc.errors import CompileError
from convc.ir import Graph, Op, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.precision import round_bf16
from convc.options import active_options

# ops whose first two inputs are multiplied together
MULTIPLYING = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.GEMM, OpKind.MATMUL})


def bf16_operands(g: Graph) -> Graph:
    """The pipeline's pass: ``to_bf16`` when the compile asks for bf16, else ``g`` as it is."""
    options = active_options()
    return to_bf16(g) if options is not None and options.precision == "bf16" else g


def to_bf16(g: Graph) -> Graph:
    """Round the multiplied operands of every conv/gemm of ``g`` to bf16 values (in place; returns ``g``)."""
    rounded: dict[str, str] = {}  # tensor -> the tensor holding its bf16 values
    for op in g.ops():
        if op.kind not in MULTIPLYING:
            continue
        inputs = list(op.inputs)
        for i in (0, 1):
            source = _unlowered(g, op, i)
            if source is not None:  # round the Im2Col's input; the conv keeps reading the Im2Col
                im2col = g.producer(op.inputs[i])
                g.set_inputs(im2col, (_rounded(g, im2col, source, rounded),) + tuple(im2col.inputs[1:]))
            else:
                inputs[i] = _rounded(g, op, inputs[i], rounded)
        g.set_inputs(op, tuple(inputs))
    g.metadata["precision"] = "bf16"
    return g


def _unlowered(g: Graph, op: Op, i: int) -> str | None:
    """The input of the Im2Col that feeds operand ``i`` of ``op``, when the Im2Col feeds nothing else."""
    producer = g.producer(op.inputs[i])
    if producer is not None and producer.kind is OpKind.IM2COL and len(g.consumers(op.inputs[i])) == 1:
        return producer.inputs[0]
    return None


def _rounded(g: Graph, reader: Op, name: str, rounded: dict[str, str]) -> str:
    """The name of a tensor with ``name``'s values rounded to bf16, made once per tensor."""
    if name in rounded:
        return rounded[name]
    t = g.tensor(name)
    if t.dtype != np.float32:
        raise CompileError(f"node {reader.name!r} ({reader.kind.value}): bf16 precision needs float32 operands, "
                           f"tensor {name!r} is {t.dtype}")
    if t.kind is TensorKind.CONSTANT and t.data is not None:
        data = round_bf16(np.asarray(t.data, dtype=np.float32))
        if all(c.kind in MULTIPLYING or c.kind is OpKind.IM2COL for c in g.consumers(name)):
            t.data = data  # the tensor is a copy (the pipeline copies the graph): the caller's weights stay
            out = name
        else:  # something besides a product reads it too: that reader keeps the float32 values
            out = g.add_constant(g.fresh_name(f"{name}_bf16"), data).name
    else:
        out = g.add_op(OpKind.ROUND_BF16, NoAttrs(), [name], name=f"{name}_bf16").outputs[0]
        g.tensor(out).layout = t.layout
    rounded[name] = out
    return out
