"""``from convc import nn``: the PyTorch-like model DSL (implemented in ``convc.frontend.dsl``)."""
from convc.frontend.dsl import *  # noqa: F401,F403
from convc.frontend.dsl import __all__  # noqa: F401
