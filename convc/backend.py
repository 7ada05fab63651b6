"""convc as an ONNX backend (``onnx.backend.base.Backend``), so ``onnx.backend.test`` can drive it.

    import convc.backend
    rep = convc.backend.prepare(model)        # a BackendRep
    outputs = rep.run([x])                    # numpy arrays in graph-output order

convc compiles ahead of time for concrete shapes and float32 tensors, while ONNX test models feed
shapes, pads, axes, scales and clip bounds as graph inputs. The rep therefore compiles at its first
``run``, when the values are known: every non-float32 input, and every input a node needs as a
constant (``UnsupportedOpError.constant_inputs``), is compiled in as a constant; the float32 rest
are run-time inputs. One compiled variant is kept per distinct set of those constant values, so a
rep run repeatedly on new data compiles once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx.reader import read_model
from convc.session import CompiledModel


def _bytes_key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.tobytes()


class ConvcRep(BackendRep):
    """A prepared model: compiles on first run for the values of its compile-time inputs, then reuses it."""

    def __init__(self, model: onnx.ModelProto, threads: int | None = None):
        self.model = model
        self.threads = threads
        # positional inputs feed the graph inputs that are not initializers, as onnxruntime's backend does:
        # IR-3 models (caffe2's conversions) list every initializer as an input, the data input last
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self._constant_inputs: set[str] = set()  # float inputs some node needs as constants, learned once
        self._compiled: dict[tuple, CompiledModel] = {}

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        return {name: np.asarray(v) for name, v in zip(self.input_names, inputs)}

    def _specialized(self, bound: dict[str, np.ndarray]) -> onnx.ModelProto:
        """The model with the ``bound`` inputs turned into initializers."""
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        kept = [vi for vi in m.graph.input if vi.name not in bound]
        del m.graph.input[:]
        m.graph.input.extend(kept)
        old = [t for t in m.graph.initializer if t.name not in bound]
        del m.graph.initializer[:]
        m.graph.initializer.extend(old + [numpy_helper.from_array(v, k) for k, v in bound.items()])
        return m

    def compiled_for(self, feeds: Mapping[str, np.ndarray]) -> tuple[CompiledModel, dict[str, np.ndarray]]:
        """The compiled variant for these feeds, and the feeds it takes at run time."""
        import convc
        while True:  # each failed round binds the inputs it found some node needs as constants
            bound = {k: v for k, v in feeds.items() if v.dtype != np.float32 or k in self._constant_inputs}
            key = tuple(sorted((k, _bytes_key(v)) for k, v in bound.items()))
            if key in self._compiled:
                break
            try:
                self._compiled[key] = convc.compile(self._specialized(bound), threads=self.threads)
                break
            except UnsupportedOpError as e:
                new = set(e.constant_inputs) & set(feeds) - set(bound)
                if not new:
                    raise
                self._constant_inputs |= new
        return self._compiled[key], {k: v for k, v in feeds.items() if k not in bound}

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        feeds = self._feeds(inputs)
        model, runtime = self.compiled_for(feeds)
        result = model.run(runtime)
        return namedtupledict("Outputs", self.output_names)(*[result[n] for n in self.output_names])


class ConvcBackend(Backend):
    """The ONNX backend interface over convc.compile (CPU only)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> ConvcRep:
        if not cls.supports_device(device):
            raise ValueError(f"convc compiles for the CPU, not {device!r}")
        model = read_model(model)  # a path or bytes too; ModelImportError for anything unreadable
        try:
            super().prepare(model, device, **kwargs)  # onnx.checker
        except onnx.checker.ValidationError as e:
            raise ModelImportError(f"the model fails onnx.checker: {e}") from None
        return ConvcRep(model, threads=kwargs.get("threads"))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node: a one-node model whose inputs take the given arrays' types and shapes."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        arrays = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
        names = list(inputs) if isinstance(inputs, Mapping) else [n for n in node.input if n]
        value_infos = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype),
                                                          np.asarray(a).shape) for n, a in zip(names, arrays)]
        outputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
        graph = onnx.helper.make_graph([node], f"run_node_{node.op_type}", value_infos, outputs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        return ConvcRep(model).run(dict(zip(names, arrays)))


prepare = ConvcBackend.prepare
run_model = ConvcBackend.run_model
run_node = ConvcBackend.run_node
supports_device = ConvcBackend.supports_device
