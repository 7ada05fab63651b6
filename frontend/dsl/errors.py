"""The errors convc.nn raises while a model is defined, traced or loaded.

All derive from ``ModelDefinitionError`` (a ``ConvcError``); shape errors are also ``GraphError``s
because they are the DSL spelling of the shape inference failures ``Graph.add_op`` reports.
Every message names the layer or parameter by its dotted name and gives the offending shapes.
"""
from __future__ import annotations

from convc.errors import ConvcError, GraphError


class ModelDefinitionError(ConvcError):
    """A convc.nn model is declared or used in a way convc cannot trace."""


class LayerShapeError(ModelDefinitionError, GraphError):
    """A layer's input does not fit the layer (raised at build time, before any compilation)."""


class ParameterShapeError(ModelDefinitionError, ValueError):
    """A parameter or buffer was assigned or loaded with the wrong shape, or a state dict lacks names."""
