"""Training passes: reverse-mode differentiation (one gradient rule per op family, registered by
the import line below), and the training step built on it (``training.py``)."""
from convc.passes.autodiff.core import GRADIENTS, GradContext, backward, gradient

# registration: one import line per family
from convc.passes.autodiff import conv, elementwise, gemm, norm, pool, shape, softmax  # noqa: E402,F401

__all__ = ["GRADIENTS", "GradContext", "backward", "gradient"]
