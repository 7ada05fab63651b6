"""Op kinds and their definitions. Each family registers itself with an explicit import below."""
from convc.ops.base import (NoAttrs, OpDef, OpGroup, OpKind, TensorType, fusible_activations, op_def, register,
                            registered_kinds)

# registration: one import line per family
from convc.ops import conv, elementwise, gemm, norm, pool, shape, softmax  # noqa: E402,F401
from convc.ops import im2col, precision, reduce  # noqa: E402,F401
from convc.ops import conv_transpose, resize  # noqa: E402,F401
from convc.ops import quant  # noqa: E402,F401
from convc.ops import conv_grad, elementwise_grad, loss, norm_grad, optim, pool_grad  # noqa: E402,F401  (training)

__all__ = ["NoAttrs", "OpDef", "OpGroup", "OpKind", "TensorType", "fusible_activations", "op_def", "register",
           "registered_kinds"]
