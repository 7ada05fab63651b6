"""What a compiled artifact becomes when it is loaded, below both the API and the driver.

``convc.load`` (libraries), the driver (JIT artifacts from the compile cache or a pickle) and the
code that checks an artifact before running it share these: the error for an artifact that cannot
run here, the graph that stands in for the optimized one, and the input/output specs read back
from the metadata. Nothing here imports llvmlite or the compiler.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convc.errors import ConvcError
from convc.runtime import IOSpec


class LoadError(ConvcError):
    """A compiled artifact that cannot run here: not a convc library, another ABI, missing CPU features."""


class LazyGraph:
    """Stands in for ``CompiledModel.graph`` when the code came from the compile cache, a pickle or a
    library: the graph's name and metadata are at hand; anything else rebuilds the optimized graph
    on first use (import and passes, no code generation), or says why it cannot."""

    def __init__(self, name: str, metadata: dict | None = None, factory: Callable[[], Any] | None = None,
                 why_not: str = "it was loaded from compiled code"):
        self.name = name
        self.metadata = dict(metadata or {})
        self._factory = factory
        self._graph = None
        self._why_not = why_not

    def materialize(self):
        if self._graph is None:
            if self._factory is None:
                raise AttributeError(f"model {self.name!r} has no graph: {self._why_not}")
            self._graph = self._factory()
        return self._graph

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr in ("_factory", "_graph", "_why_not"):
            raise AttributeError(attr)
        return getattr(self.materialize(), attr)

    def __repr__(self) -> str:
        state = "built" if self._graph is not None else "not built yet"
        return f"<convc graph {self.name!r} ({state})>"


def cpu_error(where: str, meta: dict, missing: Sequence[str]) -> LoadError:
    return LoadError(f"{where} was compiled for {meta.get('cpu', '?')} ({meta.get('triple', '?')}, target "
                     f"{meta.get('target', '?')}) and needs CPU feature(s) this machine lacks: {', '.join(missing)}. "
                     "Running it would crash with an illegal instruction; rebuild it on this machine, or for "
                     "a portable level with `convc compile --target x86-64-v3` (or x86-64).")


def io_specs(items: list[dict]) -> list[IOSpec]:
    """The IOSpecs of an artifact's metadata ``inputs`` or ``outputs``."""
    return [IOSpec(s["name"], tuple(int(d) for d in s["shape"]), np.dtype(s["dtype"])) for s in items]
