"""The compiled model users call, and an onnxruntime-compatible InferenceSession."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

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
                 override: Callable[[frozenset[str]], "CompiledModel"] | None = None):
        self._runner = runner
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
        fed = {s.name for s in self._runner.inputs}
        names = frozenset(k for k in feeds if k not in fed and k in set(self.overridable))
        if not names or self._override is None:
            return self
        if names not in self._overridden:
            self._overridden[names] = self._override(names)
        return self._overridden[names]

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
        code without compiling (convc/load.py). Variants compiled on first use are not included."""
        from convc.load import reduce_model
        return reduce_model(self)


class InferenceSession:
    """Drop-in for ``onnxruntime.InferenceSession`` on CPU: ``run(output_names, feeds) -> list``."""

    def __init__(self, path_or_bytes, sess_options: Any = None, providers: Sequence[str] | None = None,
                 *, threads: int | None = None, batch: int | None = None):
        from convc.compiler import compile
        self._model = compile(path_or_bytes, threads=threads, batch=batch)
        self._declared = {} if batch is not None else _declared_shapes(path_or_bytes)

    def _spec(self, spec: IOSpec) -> IOSpec:
        """As onnxruntime shows it: the declared shape, symbolic dimensions by name (``['N', 1, 28, 28]``);
        dimensions fixed by ``batch=`` or never declared are the compiled ones."""
        declared = self._declared.get(spec.name)
        if declared is None or len(declared) != len(spec.shape):
            return spec
        shape = [d if isinstance(d, str) else n for d, n in zip(declared, spec.shape)]
        return dataclasses.replace(spec, shape=shape)

    def get_inputs(self) -> list[IOSpec]:
        return [self._spec(s) for s in self._model.inputs]

    def get_outputs(self) -> list[IOSpec]:
        return [self._spec(s) for s in self._model.outputs]

    def get_providers(self) -> list[str]:
        return ["ConvcCPUExecutionProvider"]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None):
        result = self._model.run(input_feed)
        names = list(output_names) if output_names else [s.name for s in self._model.outputs]
        unknown = [n for n in names if n not in result]
        if unknown:
            raise InputError(f"unknown output name(s) {unknown}; the model has {list(result)}")
        return [result[n] for n in names]


def _declared_shapes(model: Any) -> dict[str, list[int | str | None]]:
    """The shapes an ONNX model declares for its graph inputs and outputs (symbolic dimensions as their
    names); empty for anything that is not an ONNX model (a Graph, a convc.nn module)."""
    import os

    import onnx
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto)):
        return {}
    from convc.frontend.onnx.reader import read_model
    model = read_model(str(model) if isinstance(model, os.PathLike) else model, external_data=False)
    shapes: dict[str, list[int | str | None]] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return shapes
