"""Training passes: reverse-mode differentiation (one gradient rule per op family, registered by
the import line below), and the training step built on it (``training.py``)."""
# registration: one import line per family
from convc.passes.autodiff import conv, elementwise, gemm, norm, pool, shape, softmax  # noqa: F401
from convc.passes.autodiff.core import GRADIENTS, GradContext, backward, gradient

__all__ = ["GRADIENTS", "GradContext", "backward", "gradient"]
