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
                 *, threads: int | None = None, batch: int | None = None, input_shapes: Any = None):
        from convc.compiler import compile
        self._model = compile(path_or_bytes, threads=threads, batch=batch, input_shapes=input_shapes)
        self._declared = _declared_shapes(path_or_bytes, batch, input_shapes)

    def _spec(self, spec: IOSpec) -> IOSpec:
        """As onnxruntime shows it: the declared shape, symbolic dimensions by name (``['N', 3, 'H',
        'W']``); dimensions fixed by ``batch=`` or ``input_shapes=``, or never declared, are the
        compiled ones."""
        declared = self._declared.get(spec.name)
        if declared is None or len(declared) != len(spec.shape):
            return spec
        shape = [d if isinstance(d, str) or (isinstance(d, int) and not isinstance(n, int)) else n
                 for d, n in zip(declared, spec.shape)]
        if all(isinstance(d, int) for d in shape):  # fixed: as the compiled model shows it
            return dataclasses.replace(spec, shape=tuple(shape))
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


def _declared_shapes(model: Any, batch: int | None = None,
                     input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int | str | None]]:
    """The shapes an ONNX model declares for its graph inputs and outputs (symbolic dimensions as their
    names), with the symbols ``batch`` (the first dimension of the inputs) and ``input_shapes`` give
    a size replaced by it; empty for anything that is not an ONNX model (a Graph, a
    convc.nn module)."""
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
    sizes: dict[str, int] = {}
    inits = {t.name for t in model.graph.initializer}
    from convc.frontend.onnx.signature import normalize
    given = normalize(input_shapes) or {}
    for n, v in given.items():  # symbols' sizes given by name ({"H": 224}; H=224 on the command line)
        if isinstance(v, int) or (len(v) == 1 and n not in shapes):
            sizes[n] = v if isinstance(v, int) else v[0]
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = shapes[vi.name]
        if batch is not None and dims and not isinstance(dims[0], int):
            if dims[0] is not None:
                sizes[dims[0]] = batch
            dims[0] = batch
        for i, n in enumerate(given.get(vi.name, ())):
            if i < len(dims) and not isinstance(dims[i], int):
                if dims[i] is not None:
                    sizes[dims[i]] = n
                dims[i] = n
    for dims in shapes.values():
        dims[:] = [sizes.get(d, d) if isinstance(d, str) else d for d in dims]
    return shapes
