"""What the Trainer compiles: the forward graph for one input shape or one per input
(convc/train_batch.py checks the arrays each step is fed)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convc.driver import is_onnx_source, load_forward as load_one, load_graph
from convc.errors import InputError
from convc.ir import Graph
from convc.limits import positive_int


def is_one_shape(input_shape: Any) -> bool:
    """One shape (ints), not one per input (a dict, or a sequence of sequences)."""
    if isinstance(input_shape, Mapping):
        return False
    return not (isinstance(input_shape, (list, tuple)) and input_shape
                and all(isinstance(s, (list, tuple, np.ndarray)) for s in input_shape))


def input_names(model: Any) -> list[str] | None:
    """The inputs a caller feeds, in order (None for a convc.nn module: it has one)."""
    if isinstance(model, Graph):
        return list(model.inputs)
    if is_onnx_source(model):
        from convc.frontend.onnx.reader import read_model
        from convc.frontend.onnx.signature import declared_inputs
        return list(declared_inputs(read_model(str(model) if isinstance(model, Path) else model,
                                               external_data=False)))
    return None


def load_forward(model: Any, input_shape: Any) -> Graph:
    """The inference Graph of ``model`` for ``input_shape``: one shape (a model with one input), or
    one per input, a dict {name: shape} or a list in the model's input order, sharing a batch."""
    names = input_names(model)
    if is_one_shape(input_shape):
        if names is not None and len(names) != 1:
            raise InputError(f"input_shape={input_shape!r} is one shape, the model has {len(names)} inputs {names}: "
                             "give one shape per input, a dict {name: shape} or a list in that order")
        return load_one(model, input_shape)
    if names is None:
        raise InputError(f"input_shape={input_shape!r} gives several inputs; a convc.nn module has one: give its shape")
    if isinstance(input_shape, Mapping):
        missing, unknown = [n for n in names if n not in input_shape], [n for n in input_shape if n not in names]
        if missing or unknown:
            raise InputError(f"input_shape: missing inputs {missing}, unexpected {unknown}; the model's inputs are "
                             f"{names}")
        given = [input_shape[n] for n in names]
    else:
        if len(input_shape) != len(names):
            raise InputError(f"input_shape has {len(input_shape)} shapes, the model has {len(names)} inputs {names} "
                             "(one shape per input, in this order)")
        given = list(input_shape)
    shapes = {}
    for name, shape in zip(names, given):
        try:
            shapes[name] = tuple(positive_int("input_shape", d, optional=False) for d in shape)
        except (InputError, TypeError):
            shapes[name] = ()
        if len(shapes[name]) < 2:
            raise InputError(f"input_shape of input {name!r}: {shape!r} must be (batch, ...) with at least one more "
                             "dimension, positive integers")
    batches = {n: s[0] for n, s in shapes.items()}
    if len(set(batches.values())) != 1:
        raise InputError(f"input_shape: the inputs' batch sizes differ ({batches}); they share one batch")
    batch = shapes[names[0]][0]
    g = load_graph(model, batch, input_shapes=shapes if is_onnx_source(model) else None)
    for name in names:
        if g.tensor(name).shape != shapes[name]:
            raise InputError(f"input_shape {shapes[name]} does not match the model's input {name!r} of shape "
                             f"{g.tensor(name).shape}")
    return g
