"""The options of a compile, resolved once where the user gives them and passed down frozen.

``convc.compile``, ``InferenceSession``, ``Trainer``, ``convc.profile`` and ``convc compile`` take
loose keyword arguments (``threads=None`` meaning "every core", ``cache=None`` meaning "as the
environment says"). ``resolve_options`` checks and defaults them once, at that boundary; the
driver (convc/driver.py), the cache and codegen read the resulting ``CompileOptions`` and never
default or clamp them again.

A model that already exists (from the compile cache, a pickle or a library) was compiled for some
number of threads and runs with at most that many: ``run_threads`` is that one rule.

The driver hands the options to the pass pipeline (``pipeline(..., options=)``), which makes them
visible to the passes that depend on them (im2col fusion's threads, Winograd, precision) as
``active_options()`` while they run; ``applied(options)`` does the same for a caller outside a
compile (``convc profile``'s analysis).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from convc.errors import InputError

from convc.limits import positive_int


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# the arithmetic of convs and matrix products: float32, or bf16 products with float32 accumulation
PRECISIONS = ("float32", "bf16")


@dataclass(frozen=True)
class CompileOptions:
    """What, besides the model, decides the code a compile produces.

    ``threads``: the most worker threads a context may use (the thread pool is sized for it).
    ``instrument``: per-kernel timestamps (``run_timed``, ``convc.profile``).
    ``cache``: False bypasses the on-disk compile cache; None lets ``CONVC_NO_CACHE`` decide.
    ``target``: the CPU of an ahead-of-time build (a name or an ``AotTarget``); the JIT compiles
    for this machine.
    ``winograd``: kernel selection may run 3x3 stride-1 convs as Winograd F(2x2,3x3) or F(4x4,3x3)
    where it measured faster (passes/kernel_selection.py); False keeps every conv on its direct
    kernel (bit-for-bit the sums of the direct conv; Winograd differs by up to ~1e-5 relative).
    ``precision``: "float32" (the default) or "bf16": every Conv, ConvTranspose, Gemm and MatMul
    multiplies bf16-rounded operands and accumulates in float32 (passes/precision.py). float32 stays
    the default because convc puts accuracy first: bf16 changes logits by ~1e-3 relative, and a
    runtime that switches to it on its own gives users other numbers than the model's."""
    threads: int
    instrument: bool = False
    cache: bool | None = None
    target: Any = "native"
    winograd: bool = True
    precision: str = "float32"

    def with_(self, **changes: Any) -> CompileOptions:
        return replace(self, **changes)


def resolve_options(*, threads: int | None = None, instrument: bool = False, cache: bool | None = None,
                    target: Any = "native", winograd: bool | None = None,
                    precision: str | None = None) -> CompileOptions:
    """The one place the options are checked and defaulted: ``threads`` must be a positive int
    (2.5 and 0 are refused, not rounded or clamped) and defaults to ``default_threads()``;
    ``winograd`` must be a bool (``winograd="no"`` would otherwise read as True) and defaults to
    the enclosing compile's (``applied``: ``convc profile --no-winograd --measure``), else True.
    ``precision`` is one of ``PRECISIONS`` and defaults likewise to the enclosing compile's, else
    "float32". With "bf16", ``winograd`` defaults to False: Winograd's transforms would mix the
    bf16 values before they are multiplied, so the products would no longer be bf16 products
    (what a CPU with ``vdpbf16ps`` computes); ``winograd=True`` asks for it anyway."""
    active = active_options()
    if precision is None:
        precision = "float32" if active is None else active.precision
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if winograd is None:
        winograd = (True if active is None else active.winograd) and precision == "float32"
    if not isinstance(winograd, bool):
        raise InputError(f"winograd must be True or False, got {winograd!r}")
    return CompileOptions(threads=positive_int("threads", threads) or default_threads(),
                          instrument=bool(instrument), cache=cache, target=target, winograd=winograd,
                          precision=precision)


_ACTIVE: ContextVar[CompileOptions | None] = ContextVar("convc_compile_options", default=None)


@contextmanager
def applied(options: CompileOptions) -> Iterator[CompileOptions]:
    """Run a compile with ``options`` visible to the pass pipeline (``active_options``)."""
    token = _ACTIVE.set(options)
    try:
        yield options
    finally:
        _ACTIVE.reset(token)


def active_options() -> CompileOptions | None:
    """The options of the compile this code runs in (``applied``), or None outside one."""
    return _ACTIVE.get()


def run_threads(requested: int | None, compiled: int) -> int:
    """The threads a model compiled for ``compiled`` threads runs with when ``requested`` (None:
    all of them); never more than it was compiled for."""
    compiled = max(1, int(compiled))
    return compiled if requested is None else max(1, min(int(requested), compiled))
