"""The compiled model users call: what the driver (convc/driver.py) and ``convc.load`` build.

It sits below the API and the driver, beside the runtime it calls (convc/runtime.py): the driver
builds one from a JIT artifact and ``convc.load`` from a library without importing each other or
the user-facing modules (``convc.session`` re-exports it). What a model needs from above comes
in as data when it is built: the closures that compile variants on first use, and the function
that restores it from a pickle (``restore``: a module-level function of whoever built it).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from convc.errors import GraphError, InputError, ModelImportError
from convc.limits import check_size
from convc.runtime import IOSpec, NativeRunner


class CompiledModel:
    """A model compiled to native code. numpy arrays in, numpy arrays out.

    ``run(feeds)`` maps input names to arrays and returns a dict of outputs; calling the model with
    positional arrays returns one array (or a tuple when the model has several outputs). When the
    model's batch dimension is symbolic and no ``batch`` was fixed, a new batch size compiles a
    specialized variant on first use and keeps it.

    ONNX initializers listed as graph inputs (``overridable``) are compiled in as constants; feeding
    some of them to ``run`` overrides their defaults, as ONNX specifies: a variant reading those
    names at run time compiles on first use (one per set of names) and is kept."""

    def __init__(self, runner: NativeRunner, graph, threads: int | None = None,
                 respecialize: Callable[[int], "CompiledModel"] | None = None,
                 override: Callable[[frozenset[str]], "CompiledModel"] | None = None, *,
                 artifact: Any = None, restore: Callable[[dict, int | None], "CompiledModel"] | None = None):
        self._runner = runner
        # pickling: ``artifact.state()`` is the compiled code as data, ``restore(state, threads)``
        # (a module-level function of the driver or convc.load) rebuilds the model from it
        self._artifact = artifact
        self._restore = restore
        self.graph = graph  # the optimized graph the native code was generated from
        self.threads = threads
        self._respecialize = respecialize
        self._variants: dict[int, CompiledModel] = {}
        self._override = override
        self._overridden: dict[frozenset[str], CompiledModel] = {}

    @property
    def overridable(self) -> list[str]:
        """Graph inputs with a default (an ONNX initializer) that this variant compiled in as constants."""
        fed = {s.name for s in self._runner.inputs}
        return [n for n in self.graph.metadata.get("initializer_inputs", []) if n not in fed]

    def _override_for(self, feeds: Mapping[str, Any]) -> "CompiledModel":
        if self._override is None:  # nothing to compile: the runner's check names any unknown feed
            return self
        fed = {s.name for s in self._runner.inputs}
        names = frozenset(k for k in feeds if k not in fed and k in set(self.overridable))
        if not names or self._override is None:
            return self
        if names not in self._overridden:
            self._overridden[names] = self._override(names)
        return self._overridden[names]

    def bind(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Read these inputs from the caller's arrays on every run that does not feed them: the
        arrays are used in place, never copied (a Trainer's state, which its compiled step updates
        in place); they must be writeable, C-contiguous and of the input's dtype and shape."""
        self._runner.bind(arrays)

    @property
    def inputs(self) -> list[IOSpec]:
        return list(self._runner.inputs)

    @property
    def outputs(self) -> list[IOSpec]:
        return list(self._runner.outputs)

    @property
    def batch(self) -> int | None:
        return self._runner.inputs[0].shape[0] if self._runner.inputs and self._runner.inputs[0].shape else None

    def _variant_for(self, feeds: Mapping[str, Any]) -> "CompiledModel":
        if self._respecialize is None or not self._runner.inputs:
            return self
        first = feeds.get(self._runner.inputs[0].name)
        shape = getattr(first, "shape", None)
        if not shape or shape[0] == self.batch or shape[1:] != self._runner.inputs[0].shape[1:]:
            return self
        spec = self._runner.inputs[0]
        if getattr(first, "dtype", None) != spec.dtype:
            return self  # the input check rejects it; do not compile a variant first
        n = int(shape[0])
        if n < 1:
            raise InputError(f"input {spec.name!r} has shape {tuple(shape)}: a batch of {n}; the batch must be at "
                             "least 1")
        # a feed of batch 2**31 (a broadcast view costs nothing) must not compile a model needing TiBs
        check_size(f"input {spec.name!r}", shape, spec.dtype, InputError)
        if n not in self._variants:
            try:
                self._variants[n] = self._respecialize(n)
            except (ModelImportError, GraphError) as e:  # this batch size, not the model, is the problem
                raise InputError(f"input {spec.name!r} has batch {n}; the model cannot be built for it: {e}") from e
        return self._variants[n]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        model = self._variant_for(feeds)._override_for(feeds)
        outs = model._runner.run(model._runner.check(feeds))
        return {s.name: o for s, o in zip(model._runner.outputs, outs)}

    def run_timed(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Outputs plus seconds per layer (op name -> s); needs ``compile_graph(..., instrument=True)``."""
        outs, times = self._runner.run_timed(self._runner.check(feeds))
        return {s.name: o for s, o in zip(self._runner.outputs, outs)}, times

    def __call__(self, *arrays: np.ndarray):
        if len(arrays) != len(self._runner.inputs):
            raise InputError(f"the model takes {len(self._runner.inputs)} input(s) "
                             f"{[s.name for s in self._runner.inputs]}, got {len(arrays)} array(s)")
        outs = list(self.run({s.name: a for s, a in zip(self._runner.inputs, arrays)}).values())
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.inputs)
        out = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.outputs)
        return f"<convc.CompiledModel ({sig}) -> ({out})>"

    def __reduce__(self):
        """Pickle by value, for worker processes (multiprocessing, Ray, Dask): a JIT model as its
        machine code and weights, a model from ``convc.load`` as its library; unpickling loads the
        code without compiling (``restore``: convc/driver.py for JIT code, convc/load.py
        for a library). Variants compiled on first use are not included."""
        artifact, restore = getattr(self, "_artifact", None), getattr(self, "_restore", None)
        if artifact is None or restore is None:
            raise TypeError("this CompiledModel cannot be pickled: only models from convc.compile and convc.load "
                            "carry their compiled code")
        return restore, (artifact.state(), self.threads)
