"""The input shapes an ONNX model declares, and the shapes a caller fixes for them.

A graph input's dimension is fixed (``dim_value``) or symbolic (``dim_param``, a name such as 'N'
or 'H', or nothing at all). ``input_shapes`` (``convc.compile(..., input_shapes={"x": (1, 3, 512,
512)})``, ``--input-shape x=1,3,512,512``) gives whole shapes for some inputs, and sizes for symbols
by name (``input_shapes={"H": 512, "W": 512}``, ``--input-shape H=512``), like onnxruntime's
free-dimension overrides by name; a symbol's size applies to every input declaring it, and an input
all of whose symbols are then fixed gets its whole shape. ``batch`` fixes the first dimension of
every input whose first dimension is symbolic. ``check_input_shapes`` refuses what contradicts the model or each other (an unknown
input, a wrong rank, a fixed dimension given another value, a size that is not positive, a batch
that is not ``batch``, one symbol given two values) with an InputError naming the input and its
dimensions. ``resolved_inputs`` tells what is still symbolic afterwards: what a compiled model
specializes on first use for each new input shape (convc/model.py).
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from convc.errors import InputError

Dim = int | str | None  # a fixed size, a symbol's name, or None for a symbolic dimension without a name
Declared = dict[str, tuple[Dim, ...] | None]  # runtime input -> its declared dimensions (None: no shape declared)


def declared_inputs(proto: onnx.ModelProto) -> Declared:
    """The inputs a caller feeds (graph inputs that are not initializers), in order, with their
    declared dimensions."""
    inits = {t.name for t in proto.graph.initializer}
    declared: Declared = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            declared[vi.name] = None
            continue
        declared[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in tt.shape.dim)
    return declared


def show(dims: Sequence[Dim]) -> str:
    """Dimensions as text: ``[N, 3, H, W]`` (a symbolic dimension without a name as ?)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _symbol(d: Dim) -> str:
    return f" ({d!r})" if isinstance(d, str) else ""


Shapes = dict[str, "tuple[int, ...] | int"]  # input name -> its shape, or symbol name -> its size


def _is_size(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize(input_shapes: Any) -> Shapes | None:
    """``input_shapes`` as given by a caller, checked for its form: input name -> a shape of positive
    integers, or symbol name -> a positive integer."""
    if input_shapes is None:
        return None
    if not isinstance(input_shapes, Mapping):
        raise InputError(f"input_shapes={input_shapes!r} must map input names to shapes, "
                         "e.g. {'x': (1, 3, 224, 224)}, or symbolic dimensions to sizes, e.g. {'H': 224}")
    shapes: Shapes = {}
    for name, shape in input_shapes.items():
        if not isinstance(name, str):
            raise InputError(f"input_shapes: {name!r} is not an input name (a string)")
        if _is_size(shape):  # a symbol's size
            if shape < 1:
                raise InputError(f"input_shapes: the size given for dimension {name!r}, {shape}, must be a positive "
                                 "integer")
            shapes[name] = int(shape)
            continue
        try:
            dims = tuple(shape)
        except TypeError:
            dims = None
        if dims is None or not dims or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                               for d in dims):
            raise InputError(f"input {name!r}: the shape given for it, {shape!r}, is not a sequence of integers "
                             "such as (1, 3, 224, 224)")
        dims = tuple(int(d) for d in dims)
        bad = [i for i, d in enumerate(dims) if d < 1]
        if bad:
            raise InputError(f"input {name!r}: the shape given for it, {dims}, has dimension {bad[0]} = "
                             f"{dims[bad[0]]}; every dimension must be a positive integer")
        shapes[name] = dims
    return shapes


def _symbol_sizes(declared: Declared, shapes: Shapes, batch: int | None) -> dict[str, int]:
    """The sizes ``shapes`` gives symbols by name, checked: each names a symbolic dimension of an input
    (``--input-shape H=224`` arrives as a one-dimensional shape and is read as a size when no input is
    called H), and a batch symbol agrees with ``batch``."""
    declared_symbols = {d for dims in declared.values() for d in dims or () if isinstance(d, str)}
    for name, shape in list(shapes.items()):
        if name not in declared and name in declared_symbols and isinstance(shape, tuple) and len(shape) == 1:
            shapes[name] = shape[0]
    sizes = {name: n for name, n in shapes.items() if isinstance(n, int)}
    for name, n in sizes.items():
        if name in declared:
            raise InputError(f"input {name!r}: the shape given for it, {n}, is one integer; give a sequence such as "
                             "(1, 3, 224, 224)" + (f" (the model also has a symbolic dimension {name!r}: give "
                                                   "the input's whole shape instead)" if name in declared_symbols
                                                   else ""))
        if name not in declared_symbols:
            raise InputError(f"input_shapes: {name!r} is neither an input of the model ({list(declared)}) nor a "
                             f"symbolic dimension of its inputs ({sorted(declared_symbols) or 'none'})")
        batched = [i for i, dims in declared.items() if dims and dims[0] == name]
        if batch is not None and batched and n != batch:
            raise InputError(f"dimension {name!r} is the batch of input {batched[0]!r} (declared "
                             f"{show(declared[batched[0]])}); input_shapes gives it {n}, but batch={batch} was "
                             "requested")
    return sizes


def check_input_shapes(declared: Declared, input_shapes: Any, batch: int | None = None) -> Shapes:
    """``input_shapes`` checked against the model's declared inputs and ``batch`` (InputError naming
    the input and its dimensions); returns them normalized (an empty dict for None), the symbols'
    sizes by name kept, and the whole shape added for each input they fix completely."""
    shapes = normalize(input_shapes) or {}
    sizes = _symbol_sizes(declared, shapes, batch)
    symbols: dict[str, tuple[int, str | None]] = {d: (n, None) for d, n in sizes.items()}  # -> (value, its input)
    for name, shape in shapes.items():
        if name in sizes:
            continue
        if name not in declared:
            raise InputError(f"input shape for {name!r}: the model has no input {name!r}; its inputs are "
                             f"{list(declared)}")
        dims = declared[name]
        if dims is None:  # no shape declared: the given one is the shape
            continue
        if len(dims) != len(shape):
            raise InputError(f"input {name!r} is declared {show(dims)} ({len(dims)} dimensions); the shape given "
                             f"for it, {shape}, has {len(shape)}")
        for i, (d, n) in enumerate(zip(dims, shape)):
            if isinstance(d, int) and d != n:
                raise InputError(f"input {name!r} is declared {show(dims)}: dimension {i} is fixed to {d}, but the "
                                 f"shape given for it, {shape}, makes it {n}")
            if i == 0 and batch is not None and not isinstance(d, int) and n != batch:
                raise InputError(f"input {name!r} is declared {show(dims)}: the shape given for it, {shape}, has "
                                 f"batch {n}, but batch={batch} was requested")
            if isinstance(d, str):
                seen = symbols.setdefault(d, (n, name))
                if seen[0] != n:
                    where = f"in the shape given for input {seen[1]!r}" if seen[1] else "by name in input_shapes"
                    raise InputError(f"dimension {d!r} is {seen[0]} {where} but {n} in the one given for input "
                                     f"{name!r} ({shape}); one symbol has one size")
    for name, dims in declared.items():  # inputs whose every symbolic dimension a size by name (or batch) fixes
        if name in shapes or not dims or not sizes or not any(d in sizes for d in dims):
            continue
        whole = tuple(d if isinstance(d, int) else batch if i == 0 and batch is not None else sizes.get(d)
                      for i, d in enumerate(dims))
        if all(isinstance(n, int) for n in whole):
            shapes[name] = whole
    return shapes


def fixed_symbols(declared: Declared, shapes: Mapping[str, "tuple[int, ...] | int"]) -> dict[str, int]:
    """Symbol name -> size, for the symbols ``shapes`` (checked by ``check_input_shapes``) fix."""
    symbols: dict[str, int] = {n: v for n, v in shapes.items() if isinstance(v, int)}
    for name, shape in shapes.items():
        if isinstance(shape, int):
            continue
        for d, n in zip(declared.get(name) or (), shape):
            if isinstance(d, str):
                symbols[d] = n
    return symbols


def resolved_inputs(declared: Declared, shapes: Mapping[str, "tuple[int, ...] | int"],
                    batch: int | None = None) -> dict[str, tuple[Dim, ...]]:
    """Each input's dimensions once ``shapes`` (checked by ``check_input_shapes``) and ``batch``
    applied: sizes where fixed, the symbol (its name, or None) where still free. Inputs without a
    declared shape and none given are left out (their import fails)."""
    symbols = fixed_symbols(declared, shapes)
    resolved: dict[str, tuple[Dim, ...]] = {}
    for name, dims in declared.items():
        if name in shapes:
            resolved[name] = tuple(shapes[name])
        elif dims is not None:
            resolved[name] = tuple(d if isinstance(d, int) else batch if i == 0 and batch is not None
                                   else symbols.get(d, d) if isinstance(d, str) else d for i, d in enumerate(dims))
    return resolved


def unfixed_message(name: str, dims: Sequence[Dim], positions: Sequence[int]) -> str:
    """What an import says of an input whose symbolic dimensions nothing fixed."""
    what = ", ".join(f"{i}{_symbol(dims[i])}" for i in positions)
    example = ",".join(str(d) if isinstance(d, int) else "1" if i == 0 else "224" for i, d in enumerate(dims))
    several = "symbolic dimensions" if len(positions) > 1 else "a symbolic dimension"
    return (f"graph input {name!r} has {several} {what} (declared {show(dims)}); give its shape "
            f"with input_shapes={{{name!r}: ({example.replace(',', ', ')})}} (on the command line: --input-shape "
            f"{name}={example}), or compile with convc.compile or InferenceSession, which compile each new input "
            "shape on first use")
