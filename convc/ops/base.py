"""Op kinds, tensor types and the registry of op definitions.

An op family lives in ``convc/ops/<family>.py``: attribute dataclasses (their ONNX spelling
declared with ``convc.ops.attrs.onnx_attr``), shape/dtype inference, the numpy reference, the MAC
and FLOP rules and whether an activation is fusible, registered here with ``register``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from convc.errors import GraphError


class OpKind(enum.Enum):
    # convolution and matrix products
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    GEMM = "Gemm"
    MATMUL = "MatMul"
    # unary elementwise
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    SIGMOID = "Sigmoid"
    SWISH = "Swish"  # x * sigmoid(alpha x); alpha = 1 is SiLU (fusion rewrites Mul(x, Sigmoid(x)) to it)
    TANH = "Tanh"
    IDENTITY = "Identity"
    DROPOUT = "Dropout"
    CLIP = "Clip"
    ELU = "Elu"
    SELU = "Selu"
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    SOFTPLUS = "Softplus"
    SOFTSIGN = "Softsign"
    ERF = "Erf"
    NEG = "Neg"
    ABS = "Abs"
    EXP = "Exp"
    LOG = "Log"
    SQRT = "Sqrt"
    RECIPROCAL = "Reciprocal"
    POW = "Pow"
    GELU = "Gelu"
    MISH = "Mish"
    FLOOR = "Floor"
    CEIL = "Ceil"
    ROUND = "Round"  # half to even, as ONNX
    # binary / variadic elementwise with broadcasting
    ADD = "Add"
    MUL = "Mul"
    SUM = "Sum"
    SUB = "Sub"
    DIV = "Div"
    MAX = "Max"
    MIN = "Min"
    PRELU = "PRelu"
    WHERE = "Where"  # cond ? x : y with a constant condition, imported as a float32 0/1 mask (any non-zero: x)
    # pooling
    MAX_POOL = "MaxPool"
    AVERAGE_POOL = "AveragePool"
    GLOBAL_AVERAGE_POOL = "GlobalAveragePool"
    GLOBAL_MAX_POOL = "GlobalMaxPool"
    LP_POOL = "LpPool"
    # normalization
    BATCH_NORM = "BatchNormalization"
    LRN = "LRN"
    LAYER_NORM = "LayerNormalization"
    # shape and data movement
    FLATTEN = "Flatten"
    RESHAPE = "Reshape"
    CONCAT = "Concat"
    TRANSPOSE = "Transpose"
    SPLIT = "Split"
    PAD = "Pad"
    STRIDED_SLICE = "StridedSlice"  # ONNX Slice with steps or several axes (one unit-step axis imports as SLICE)
    RESIZE = "Resize"
    EXPAND = "Expand"  # a broadcasting copy to a shape resolved at import
    # quantized tensors (convc/ops/quant.py)
    QUANTIZE_LINEAR = "QuantizeLinear"
    DEQUANTIZE_LINEAR = "DequantizeLinear"
    # reductions
    SOFTMAX = "Softmax"
    LOG_SOFTMAX = "LogSoftmax"
    # introduced by passes (no ONNX op of that name)
    IM2COL = "Im2Col"
    INT8_CONV = "Int8Conv"  # a quantized conv with its requantization fused (passes/quantize.py; convc/ops/quant.py)
    INT8_MAX_POOL = "Int8MaxPool"  # MaxPool on uint8/int8 between equal DequantizeLinear/QuantizeLinear (same place)
    INT8_GLOBAL_AVERAGE_POOL = "Int8GlobalAveragePool"  # GlobalAveragePool between DequantizeLinear/QuantizeLinear
    ROUND_BF16 = "RoundBF16"  # float32 values rounded to bf16 values before a conv/gemm reads them (passes/precision.py)
    # training (passes/autodiff): forward in training mode, gradients, losses, optimizer updates;
    # defined in convc/ops/{conv,pool,norm,elementwise}_grad.py, loss.py and optim.py
    CONV_GRAD_INPUT = "ConvGradInput"
    CONV_GRAD_WEIGHT = "ConvGradWeight"
    MAX_POOL_GRAD = "MaxPoolGrad"
    AVERAGE_POOL_GRAD = "AveragePoolGrad"
    GLOBAL_AVERAGE_POOL_GRAD = "GlobalAveragePoolGrad"
    GLOBAL_MAX_POOL_GRAD = "GlobalMaxPoolGrad"
    BATCH_NORM_TRAIN = "BatchNormTrain"
    BATCH_NORM_GRAD = "BatchNormGrad"
    BATCH_NORM_RUNNING_UPDATE = "BatchNormRunningUpdate"
    BATCH_NORM_APPLY = "BatchNormApply"  # the training forward's normalization recomputed for the backward
    RELU_GRAD = "ReluGrad"
    LEAKY_RELU_GRAD = "LeakyReluGrad"
    SIGMOID_GRAD = "SigmoidGrad"
    TANH_GRAD = "TanhGrad"
    UNARY_GRAD = "UnaryGrad"  # dX = dY * f'(X) of a unary op f that declares its derivative
    SOFTMAX_GRAD = "SoftmaxGrad"
    DROPOUT_TRAIN = "DropoutTrain"
    DROPOUT_GRAD = "DropoutGrad"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MAX = "ReduceMax"
    REDUCE_MIN = "ReduceMin"
    REDUCE_PROD = "ReduceProd"
    SLICE = "Slice"
    SOFTMAX_CROSS_ENTROPY = "SoftmaxCrossEntropy"
    SOFTMAX_CROSS_ENTROPY_GRAD = "SoftmaxCrossEntropyGrad"
    MSE_LOSS = "MseLoss"
    MSE_LOSS_GRAD = "MseLossGrad"
    BCE_LOSS = "BceLoss"
    BCE_LOSS_GRAD = "BceLossGrad"
    SGD_UPDATE = "SgdUpdate"
    MOMENTUM_UPDATE = "MomentumUpdate"
    ADAGRAD_UPDATE = "AdagradUpdate"
    RMSPROP_UPDATE = "RmsPropUpdate"
    ADAM_UPDATE = "AdamUpdate"
    ALL_FINITE = "AllFinite"
    STEP_INCREMENT = "StepIncrement"


class OpGroup:
    """Named groups so passes never compare op-name strings."""
    UNARY = frozenset({OpKind.RELU, OpKind.LEAKY_RELU, OpKind.SIGMOID, OpKind.SWISH, OpKind.TANH, OpKind.IDENTITY,
                       OpKind.DROPOUT, OpKind.CLIP, OpKind.ELU, OpKind.SELU, OpKind.HARD_SIGMOID, OpKind.HARD_SWISH,
                       OpKind.SOFTPLUS, OpKind.SOFTSIGN, OpKind.ERF, OpKind.GELU, OpKind.MISH,
                       OpKind.NEG, OpKind.ABS, OpKind.EXP, OpKind.LOG, OpKind.SQRT, OpKind.RECIPROCAL,
                       OpKind.FLOOR, OpKind.CEIL, OpKind.ROUND})
    ACTIVATION = frozenset({OpKind.RELU, OpKind.LEAKY_RELU, OpKind.SIGMOID, OpKind.TANH})
    BROADCAST = frozenset({OpKind.ADD, OpKind.MUL, OpKind.SUM, OpKind.SUB, OpKind.DIV, OpKind.MAX, OpKind.MIN,
                           OpKind.PRELU, OpKind.POW})
    ELEMENTWISE = UNARY | BROADCAST
    POOL = frozenset({OpKind.MAX_POOL, OpKind.AVERAGE_POOL, OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL,
                      OpKind.LP_POOL})
    MATMUL_LIKE = frozenset({OpKind.CONV, OpKind.GEMM, OpKind.MATMUL})
    # ops whose attributes carry an Epilogue (convc/ops/epilogue.py) that passes fuse into
    EPILOGUE = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.GEMM})
    # (the activations passes/fusion.py fuses into an epilogue: OpDef.fusible, see fusible_activations())
    # ops whose output has the input's bytes in the same order (a view, no computation)
    VIEW = frozenset({OpKind.FLATTEN, OpKind.RESHAPE, OpKind.IDENTITY, OpKind.DROPOUT})
    # what passes/autodiff adds for a training step: training-mode forms, gradients, losses, optimizer
    # updates. No ONNX import or export, no gradient of their own (the loss's is seeded), no FLOP rule
    # (the training profile lists them as unmodelled). ReduceSum and Slice, which autodiff also uses,
    # are ordinary ops.
    TRAINING = frozenset({
        OpKind.CONV_GRAD_INPUT, OpKind.CONV_GRAD_WEIGHT, OpKind.MAX_POOL_GRAD, OpKind.AVERAGE_POOL_GRAD,
        OpKind.GLOBAL_AVERAGE_POOL_GRAD, OpKind.GLOBAL_MAX_POOL_GRAD, OpKind.BATCH_NORM_TRAIN, OpKind.BATCH_NORM_GRAD,
        OpKind.BATCH_NORM_RUNNING_UPDATE, OpKind.RELU_GRAD, OpKind.LEAKY_RELU_GRAD, OpKind.SIGMOID_GRAD,
        OpKind.TANH_GRAD, OpKind.UNARY_GRAD, OpKind.SOFTMAX_GRAD, OpKind.DROPOUT_TRAIN, OpKind.DROPOUT_GRAD,
        OpKind.SOFTMAX_CROSS_ENTROPY, OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, OpKind.MSE_LOSS, OpKind.MSE_LOSS_GRAD,
        OpKind.BCE_LOSS, OpKind.BCE_LOSS_GRAD, OpKind.SGD_UPDATE, OpKind.MOMENTUM_UPDATE, OpKind.ADAGRAD_UPDATE,
        OpKind.RMSPROP_UPDATE, OpKind.ADAM_UPDATE, OpKind.ALL_FINITE, OpKind.STEP_INCREMENT, OpKind.BATCH_NORM_APPLY,
    })
    # ops only passes create, which no ONNX model spells: lowering's Im2Col, bf16's rounding and the training ops
    INTERNAL = TRAINING | {OpKind.IM2COL, OpKind.ROUND_BF16, OpKind.INT8_CONV, OpKind.INT8_MAX_POOL,
                             OpKind.INT8_GLOBAL_AVERAGE_POOL}


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class NoAttrs:
    """Attributes of an op that has none."""


FlopRule = Callable[[Any, Sequence[TensorType], Sequence[TensorType]], int]


@dataclass(frozen=True)
class OpDef:
    kind: OpKind
    attrs: type
    # (attrs, input types) -> output types; raises GraphError naming the offending values
    infer: Callable[[Any, Sequence[TensorType]], list[TensorType]]
    # (attrs, *input arrays) -> output arrays; pure numpy, dtype-preserving
    reference: Callable[..., list[np.ndarray]]
    # (attrs, input types, output types) -> multiply-accumulates; None for ops that do none
    macs: Callable[[Any, Sequence[TensorType], Sequence[TensorType]], int] | None = None
    n_inputs: tuple[int, int] = (1, 1)  # (min, max) accepted input count; max -1 = variadic
    # (attrs, input types, output types) -> FLOPs besides the MACs ("other FLOPs" of passes/macs.py);
    # None: not modelled, which the cost analysis reports by name rather than counting as zero
    flops: FlopRule | None = None
    # an activation passes/fusion.py may fold into the epilogue of a Conv, ConvTranspose or Gemm
    # (OpGroup.EPILOGUE); codegen applies it with the kind's unary kernel
    fusible: bool = False
    # a unary op's derivative as a function of its input, (attrs, x) -> dy/dx in numpy; with it
    # autodiff differentiates the op through OpKind.UNARY_GRAD, no gradient rule or backward op of its own
    derivative: Callable[[Any, np.ndarray], np.ndarray] | None = None


_REGISTRY: dict[OpKind, OpDef] = {}


def register(definition: OpDef) -> OpDef:
    if definition.kind in _REGISTRY:
        raise RuntimeError(f"op {definition.kind.value} is registered twice")
    _REGISTRY[definition.kind] = definition
    return definition


def op_def(kind: OpKind) -> OpDef:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise GraphError(f"op {kind.value} has no definition registered") from None


def registered_kinds() -> list[OpKind]:
    return list(_REGISTRY)


def fusible_activations() -> frozenset[OpKind]:
    """The activations declared ``fusible`` (passes/fusion.py folds them into epilogues)."""
    return frozenset(k for k, d in _REGISTRY.items() if d.fusible)


# --- helpers shared by the families ------------------------------------------------------
def numel(t: TensorType) -> int:
    return int(np.prod(t.shape, dtype=np.int64))


def per_output(n: int) -> FlopRule:
    """``n`` FLOPs per output element (a transcendental function counts as one)."""
    return lambda a, ins, outs: n * numel(outs[0])


def no_flops(a: Any, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Ops that only move bytes (views, Concat, Transpose, Pad, slices, Im2Col): zero by definition."""
    return 0


def check_arity(kind: OpKind, types: Sequence[TensorType], lo: int, hi: int) -> None:
    if len(types) < lo or (hi >= 0 and len(types) > hi):
        want = f"{lo}" if lo == hi else (f"at least {lo}" if hi < 0 else f"{lo} to {hi}")
        raise GraphError(f"{kind.value} takes {want} inputs, got {len(types)}")


def check_float(kind: OpKind, types: Sequence[TensorType]) -> None:
    for i, t in enumerate(types):
        if t.dtype.kind != "f":
            raise GraphError(f"{kind.value} input {i} has dtype {t.dtype}, expected a float type")


def same_type(t: TensorType) -> list[TensorType]:
    return [TensorType(t.shape, t.dtype)]


def broadcast_shapes(kind: OpKind, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise GraphError(f"{kind.value} cannot broadcast shapes {' and '.join(map(str, shapes))}") from None
