"""The sizes and numbers convc accepts, checked before anything is allocated.

A model (or a feed) can ask for any shape: an input dimension of 2**62, a batch of 2**31, a
ConstantOfShape of a billion elements. Element counts are computed here with Python integers,
which cannot wrap around the way numpy's int64 products do, and compared with one limit on the
bytes of a single tensor and of the activation arena. Every tensor of a Graph passes this check
when it is added, so products over tensor shapes elsewhere (numpy included) stay far from 2**63.

The limit is half of this machine's physical memory by default (a tensor larger than that could
not be used anyway); ``CONVC_MAX_BYTES`` (a number of bytes, suffixes K/M/G/T allowed) changes it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar

import numpy as np

from convc.errors import ConvcError, GraphError, InputError

LIMIT_ENV = "CONVC_MAX_BYTES"
_FALLBACK = 16 << 30   # when the platform does not say how much memory it has
_CEILING = 1 << 60     # far below 2**63: sums of a few limited sizes still fit in an int64
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@functools.lru_cache(maxsize=1)
def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 2 * _FALLBACK


def max_bytes() -> int:
    """The most bytes one tensor, or the arena of one compiled model, may take."""
    return _limit()[0]


# the limit held for the checks inside ``held_limit`` (one import checks every tensor: 900 checks
# for ResNet-50, 2,000 for DenseNet-121); a context variable, so compiles in threads hold their own
_HELD: ContextVar[tuple[int, str] | None] = ContextVar("convc_held_limit", default=None)


@contextlib.contextmanager
def held_limit() -> Iterator[None]:
    """Read ``CONVC_MAX_BYTES`` once for every check inside (the next one reads it again)."""
    token = _HELD.set(_limit())
    try:
        yield
    finally:
        _HELD.reset(token)


def _limit() -> tuple[int, str]:
    held = _HELD.get()
    return held if held is not None else _parse_limit(os.environ.get(LIMIT_ENV, ""))


@functools.lru_cache(maxsize=4)
def _parse_limit(text: str) -> tuple[int, str]:
    text = text.strip()
    if not text:
        return min(_physical_memory() // 2, _CEILING), f"half this machine's memory; set {LIMIT_ENV} to change it"
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    if not m or int(m.group(1)) < 1:
        raise ConvcError(f"{LIMIT_ENV}={text!r} is not a positive number of bytes (e.g. 8000000000 or 8G)")
    return min(int(m.group(1)) * _UNITS[m.group(2).upper()], _CEILING), f"{LIMIT_ENV}={text}"


def human(n: int) -> str:
    """A byte count with a binary unit: 59304908423232 -> '53.9 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def tensor_bytes(shape: Iterable[int], itemsize: int) -> int:
    """Exact bytes of a tensor (Python integers: no overflow, however large the dimensions)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def check_size(what: str, shape: Iterable[int], dtype, error: type[ConvcError] = GraphError) -> int:
    """The tensor's bytes; raises ``error`` naming ``what``, the shape and the bytes when a dimension
    is negative or the tensor is larger than ``max_bytes()``."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise error(f"{what} has shape {shape}, with a negative dimension")
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    limit, source = _limit()
    if nbytes > limit:  # the message is built only here: this check runs for every tensor of a model
        raise _too_large(f"{what} (shape {shape}, {dtype})", nbytes, limit, source, error)
    return nbytes


def check_bytes(what: str, nbytes: int, error: type[ConvcError] = GraphError) -> int:
    limit, source = _limit()
    if nbytes > limit:
        raise _too_large(what, nbytes, limit, source, error)
    return nbytes


def _too_large(what: str, nbytes: int, limit: int, source: str, error: type[ConvcError]) -> ConvcError:
    return error(f"{what} needs {nbytes} bytes ({human(nbytes)}), more than convc allows for one tensor or arena "
                 f"({human(limit)}: {source})")


# Window attributes (kernel extents, strides, dilations, pads) come straight from the model. No
# network needs values beyond int32, and bounding them keeps every index the generated code
# computes (output * stride + tap * dilation - pad) far from int64's limit.
MAX_WINDOW_VALUE = 2**31 - 1
# A pooling window loops over all its taps at run time (padding included): more than this many
# taps per output would run for hours. A global pool is GlobalAveragePool/GlobalMaxPool.
MAX_POOL_TAPS = 2**24


def check_window(op: str, **values: Sequence[int]) -> None:
    """GraphError naming ``op`` and the attribute when a window value is beyond MAX_WINDOW_VALUE."""
    for name, vals in values.items():
        if any(abs(int(v)) > MAX_WINDOW_VALUE for v in vals):
            raise GraphError(f"{op} {name}={tuple(vals)}: convc supports window sizes, strides, dilations and "
                             f"pads up to {MAX_WINDOW_VALUE}")


def positive_int(name: str, value, *, optional: bool = True) -> int | None:
    """``value`` as a positive int; refuses floats (2.5 is not silently 2), bools and strings."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}={value!r} must be a positive integer, not {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name}={value} must be a positive integer")
    return int(value)


# A model whose batch or spatial dimensions are symbolic compiles a variant on first use for each
# new input shape and keeps it. Each costs a compile and its code and arena stay in memory, so a
# caller feeding ever new sizes (a video with a changing resolution, sizes from user uploads)
# gets an error after this many instead of a slow leak; CONVC_MAX_VARIANTS changes it.
VARIANTS_ENV = "CONVC_MAX_VARIANTS"
DEFAULT_MAX_VARIANTS = 16


def max_variants() -> tuple[int, str]:
    """The most variants one compiled model compiles on first use, and where that number comes from."""
    text = os.environ.get(VARIANTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VARIANTS, f"the default; set {VARIANTS_ENV} to change it"
    if not text.isdigit() or int(text) < 1:
        raise ConvcError(f"{VARIANTS_ENV}={text!r} is not a positive integer")
    return int(text), f"{VARIANTS_ENV}={text}"
