"""Training passes: reverse-mode differentiation (one gradient rule per op family, registered by
the import line below), and the training step built on it (``training.py``).

Every op convc compiles forward has a gradient rule (``GRADIENTS``) or is listed in
``NOT_DIFFERENTIABLE`` with the reason; tests/train/test_grad_coverage.py fails on an op with neither.
"""
# registration: one import line per family
from convc.passes.autodiff import conv, elementwise, gemm, norm, pool, reduce, shape, softmax  # noqa: F401
from convc.passes.autodiff.core import GRADIENTS, GradContext, backward, gradient

from convc.ops import OpGroup, OpKind

_TRAINING_OP = ("an op of the training step itself (training-mode forward, gradient, loss or optimizer update); "
                "the step is differentiated once, so nothing differentiates it again")

# op kind -> why it has no gradient rule (backward raises GraphError naming the node if one is reached)
NOT_DIFFERENTIABLE: dict[OpKind, str] = {
    OpKind.IM2COL: "created by the lowering pass, which runs after autodiff: the training step differentiates "
                   "the Conv it replaces",
    OpKind.ROUND_BF16: "created by the bf16 precision pass for inference; convc trains in float32",
    # int8 models (convc/ops/quant.py): a quantized tensor is integer, so it has no gradient
    OpKind.QUANTIZE_LINEAR: "quantizes to int8 (integer tensors have no gradient; convc trains float32 models, "
                            "quantization-aware training is not supported)",
    OpKind.DEQUANTIZE_LINEAR: "reads int8 (integer tensors have no gradient; convc trains float32 models, "
                              "quantization-aware training is not supported)",
    OpKind.INT8_CONV: "created by passes/quantize.py in inference plans of quantized models; convc trains float32 "
                      "models",
    OpKind.INT8_MAX_POOL: "created by passes/quantize.py in inference plans of quantized models; convc trains "
                          "float32 models",
    OpKind.INT8_GLOBAL_AVERAGE_POOL: "created by passes/quantize.py in inference plans of quantized models; convc "
                                     "trains float32 models",
    **{k: _TRAINING_OP for k in OpGroup.TRAINING - GRADIENTS.keys()},
}

__all__ = ["GRADIENTS", "NOT_DIFFERENTIABLE", "GradContext", "backward", "gradient"]
