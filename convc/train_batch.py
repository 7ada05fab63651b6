"""What a training step is fed, checked: one array per model input and one target per output, and
the zero padding that lets a smaller last batch run on the compiled step (the loss and BatchNorm
count only the real rows, read at run time). ``convc.Trainer`` and the training libraries loaded
by ``convc.load`` check alike; nothing here compiles (a loaded library runs without llvmlite).

The same rule as a compiled model's inputs (convc/runtime.py): nothing is converted silently. x
and mse/bce targets must be float32; class labels are integer class indices (any integer dtype,
range-checked, then widened to int64, which loses nothing)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convc.errors import InputError
from convc.limits import check_size
from convc.runtime import dtype_error


def pad(a: np.ndarray, batch: int) -> np.ndarray:
    """``a`` with zero samples appended up to ``batch``."""
    if a.shape[0] >= batch:
        return a
    return np.concatenate([a, np.zeros((batch - a.shape[0],) + a.shape[1:], a.dtype)])


def per_input(x: Any, names: Sequence[str]) -> list[Any]:
    """``x`` as one entry per model input, in the model's order: ``x`` is one array (a model with
    one input), a list or tuple in input order, or a dict by input name."""
    names = list(names)
    if isinstance(x, Mapping):
        missing, unknown = [n for n in names if n not in x], [n for n in x if n not in names]
        if missing or unknown:
            raise InputError(f"x: missing inputs {missing}, unexpected {unknown}; the model's inputs are {names}")
        return [x[n] for n in names]
    if len(names) == 1:
        return [x]
    if isinstance(x, (list, tuple)):
        if len(x) != len(names):
            raise InputError(f"x has {len(x)} arrays, the model has {len(names)} inputs {names} (in this order)")
        return list(x)
    raise InputError(f"the model has {len(names)} inputs {names}: give x as a list of {len(names)} arrays "
                     "in that order, or a dict by input name")


def check_inputs(x: Any, shapes: Mapping[str, tuple[int, ...]]) -> list[np.ndarray]:
    """Every model input's array (float32, C-contiguous), in the order of ``shapes`` (input name ->
    its compiled shape; any batch of at least 1 passes, the same for every input)."""
    names = list(shapes)
    checked: list[np.ndarray] = []
    for name, a in zip(names, per_input(x, names)):
        a, want = np.asarray(a), shapes[name]
        if a.dtype != np.float32:
            raise dtype_error(f"input {name!r}", a.dtype, np.dtype(np.float32))
        if a.ndim != len(want) or a.shape[1:] != want[1:] or a.shape[0] < 1:
            raise InputError(f"input {name!r} has shape {a.shape}, expected (batch,) + {want[1:]} "
                             f"with a batch of at least 1 (the model's input is {want})")
        check_size(f"input {name!r}", a.shape, a.dtype, InputError)  # a broadcast view of 2**31 samples
        if checked and a.shape[0] != checked[0].shape[0]:
            raise InputError(f"input {name!r} has a batch of {a.shape[0]}, input {names[0]!r} of "
                             f"{checked[0].shape[0]}: every input needs the same number of samples")
        checked.append(np.ascontiguousarray(a))
    return checked


def check_target(y: Any, n: int, output: tuple[int, ...], class_indices: bool,
                 ignore_index: int | None = None) -> np.ndarray:
    """One output's targets for ``n`` samples: class indices (int64; ``ignore_index`` becomes -1,
    which the loss kernel skips) or float32 targets shaped like the output (``output``: its
    compiled shape)."""
    y = np.asarray(y)
    if class_indices:
        classes = output[1]
        if y.shape != (n,):
            raise InputError(f"labels have shape {y.shape}, expected ({n},): one class index per sample")
        if y.dtype.kind not in "iu":
            raise InputError(f"labels have dtype {y.dtype}, expected integer class indices "
                             "(convert with .astype(np.int64))")
        ignored = y == ignore_index if ignore_index is not None else np.zeros(n, bool)
        bad = np.flatnonzero(((y < 0) | (y >= classes)) & ~ignored)
        if bad.size:
            raise InputError(f"labels out of range [0, {classes}): {y[bad[:5]].tolist()} at positions "
                             f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}")
        y = np.ascontiguousarray(y, dtype=np.int64)
        return np.where(ignored, -1, y) if ignored.any() else y
    if y.dtype != np.float32:
        raise InputError(f"targets have dtype {y.dtype}, expected float32 (convert with .astype(np.float32))")
    if y.shape != (n,) + tuple(output[1:]):
        raise InputError(f"targets have shape {y.shape}, expected {(n,) + tuple(output[1:])} (the model's output)")
    return np.ascontiguousarray(y)


def per_output(y: Any, outputs: Sequence[str]) -> list[Any]:
    """``y`` as one target per model output: one array (a model with one output), a list of them in
    output order, or a dict by output name."""
    k, names = len(outputs), list(outputs)
    if isinstance(y, Mapping):
        missing, unknown = [n for n in names if n not in y], [n for n in y if n not in names]
        if missing or unknown:
            raise InputError(f"y: missing targets of outputs {missing}, unexpected {unknown}; the model's outputs "
                             f"are {names}")
        return [y[n] for n in names]
    if k == 1:
        return [y]
    if not isinstance(y, (list, tuple)) or len(y) != k:
        raise InputError(f"the model has {k} outputs {names}: give a list of {k} targets, one per output, or a "
                         "dict by output name")
    return list(y)
