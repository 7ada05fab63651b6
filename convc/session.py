"""The compiled model users call (convc/model.py) and an onnxruntime-compatible InferenceSession."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from convc.errors import InputError
from convc.model import CompiledModel  # noqa: F401  (public here)
from convc.runtime import IOSpec


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
