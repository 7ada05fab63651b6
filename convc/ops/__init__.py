"""Op kinds and their definitions. Each family registers itself with an explicit import below."""
from convc.ops.base import NoAttrs, OpDef, OpGroup, OpKind, TensorType, op_def, register, registered_kinds

# registration: one import line per family
from convc.ops import conv, elementwise, gemm, norm, pool, shape, softmax  # noqa: E402,F401

__all__ = ["NoAttrs", "OpDef", "OpGroup", "OpKind", "TensorType", "op_def", "register", "registered_kinds"]
