"""``Module``: the base of every convc.nn layer and model.

Like PyTorch, submodules and parameters are registered by attribute assignment in ``__init__``
and named by their dotted path from the model ("block1.conv.weight"). Parameters are float32
numpy arrays: ``model.conv1.weight`` reads one, assigning an array of the same shape writes it
(in place, so arrays obtained earlier stay live), and a wrong shape raises naming the parameter.

``forward`` is written once and traced on symbolic tensors into a convc Graph (``to_graph``),
which ``convc.compile(model, input_shape=...)`` compiles, ``summary`` profiles and ``to_onnx``
exports. Calling a model on numpy arrays runs the traced graph with the numpy reference (slow,
for checking); compile it for speed.
"""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from convc.frontend.dsl.errors import ModelDefinitionError, ParameterShapeError
from convc.frontend.dsl.init import default_generator
from convc.frontend.dsl.tracing import SymbolicTensor, Tracer, dotted
from convc.ir import Graph

if TYPE_CHECKING:
    import onnx

    from convc.frontend.dsl.summary import Summary
    from convc.session import CompiledModel

InputShape = Sequence[int] | Sequence[Sequence[int]]


class Parameter:
    """Marks an array as a trainable parameter when assigned to a module attribute::

        self.scale = nn.Parameter(np.ones((1, 16, 1, 1)))
    """

    __slots__ = ("data",)

    def __init__(self, data: Any):
        self.data = np.array(data, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape})"


class Module:
    """Base class of layers and models: subclass it, assign layers in ``__init__``, write ``forward``."""

    # built-in layers set this: their ops are named after them and they are one row of the summary
    _leaf: bool = False

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})  # name -> np.ndarray | None (None: declared absent)
        object.__setattr__(self, "_buffers", {})     # name -> np.ndarray (non-trainable state)
        object.__setattr__(self, "_modules", {})     # name -> Module
        object.__setattr__(self, "_path", "")        # dotted name in the model it was last assigned into

    # --- attribute registration ---------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_modules" not in d:
            raise ModelDefinitionError(f"{type(self).__name__}.__init__ must call super().__init__() before "
                                       f"assigning attributes (assigning {name!r})")
        if isinstance(value, Parameter):
            self._forget(name)
            d["_parameters"][name] = value.data
        elif isinstance(value, Module):
            self._forget(name)
            d["_modules"][name] = value
            value._set_path(dotted(d["_path"], name))
        elif name in d["_parameters"] or name in d["_buffers"]:
            self._write(name, value)
        else:
            if name in d["_modules"]:
                del d["_modules"][name]
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if "_modules" not in d:  # during copy/unpickling, before __init__ state exists
            raise AttributeError(name)
        for store in ("_parameters", "_buffers"):
            if name in d[store]:
                tracer = Tracer.current()
                if tracer is not None and d[store][name] is not None:
                    return tracer.param(self, name)
                return d[store][name]
        if name in d["_modules"]:
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if not self._forget(name):
            object.__delattr__(self, name)

    def _forget(self, name: str) -> bool:
        found = False
        for store in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__[store]:
                del self.__dict__[store][name]
                found = True
        if name in self.__dict__ and name not in ("_parameters", "_buffers", "_modules", "_path"):
            del self.__dict__[name]
            found = True
        return found

    def _set_path(self, path: str) -> None:
        object.__setattr__(self, "_path", path)
        for name, m in self._modules.items():
            m._set_path(dotted(path, name))

    def _write(self, name: str, value: Any) -> None:
        store = self._parameters if name in self._parameters else self._buffers
        what = "parameter" if store is self._parameters else "buffer"
        if value is None:
            if store is self._buffers:
                raise ModelDefinitionError(f"buffer {dotted(self._path, name)!r} cannot be set to None")
            store[name] = None
            return
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise ParameterShapeError(f"{what} {dotted(self._path, name)!r} takes a float array, got dtype {arr.dtype}")
        current = store[name]
        if current is None:
            store[name] = np.array(arr, dtype=np.float32)
        elif arr.shape != current.shape:
            raise ParameterShapeError(f"{what} {dotted(self._path, name)!r} has shape {current.shape}; "
                                      f"the assigned array has shape {arr.shape}")
        else:
            current[...] = arr

    def register_parameter(self, name: str, value: Any | None) -> None:
        """Declare a trainable parameter (None declares it absent, like a conv without bias)."""
        self._check_name(name)
        self._forget(name)
        self._parameters[name] = None if value is None else np.array(value, dtype=np.float32)

    def register_buffer(self, name: str, value: Any) -> None:
        """Declare non-trainable state saved in the state dict (BatchNorm's running statistics)."""
        self._check_name(name)
        self._forget(name)
        self._buffers[name] = np.array(value, dtype=np.float32)

    def add_module(self, name: str, module: Module) -> None:
        self._check_name(name)
        setattr(self, name, module)

    def _check_name(self, name: str) -> None:
        if "_modules" not in self.__dict__:
            raise ModelDefinitionError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if not name or "." in name:
            raise ModelDefinitionError(f"{name!r} is not a valid attribute name for a parameter or module")

    # --- the module tree ----------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Every module once (shared modules under their first name), this one first as ``prefix``."""
        seen: set[int] = set()

        def walk(m: Module, path: str) -> Iterator[tuple[str, Module]]:
            if id(m) in seen:
                return
            seen.add(id(m))
            yield path, m
            for name, child in m._modules.items():
                yield from walk(child, dotted(path, name))
        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _named_arrays(self, stores: tuple[str, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for path, m in self.named_modules():
            for store in stores:
                for name, arr in m.__dict__[store].items():
                    if arr is not None:
                        out[dotted(path, name)] = arr
        return out

    # --- parameters and state -----------------------------------------------------------
    def named_parameters(self) -> dict[str, np.ndarray]:
        """name -> the live float32 array of every trainable parameter (writes go into the model)."""
        return self._named_arrays(("_parameters",))

    def parameters(self) -> list[np.ndarray]:
        """The live arrays of ``named_parameters()``, in the same order."""
        return list(self.named_parameters().values())

    def named_buffers(self) -> dict[str, np.ndarray]:
        return self._named_arrays(("_buffers",))

    def num_parameters(self) -> int:
        return sum(int(a.size) for a in self.named_parameters().values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer by dotted name, per module parameters then buffers."""
        return {k: v.copy() for k, v in self._named_arrays(("_parameters", "_buffers")).items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy ``state`` into the model. Every shape is checked before anything is written; with
        ``strict`` the names must match exactly. Returns (missing, unexpected) names."""
        own = self._named_arrays(("_parameters", "_buffers"))
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and (missing or unexpected):
            problems += [f"missing {k!r} {own[k].shape}" for k in missing]
            problems += [f"unexpected {k!r}" for k in unexpected]
        arrays = {k: np.asarray(v) for k, v in state.items() if k in own}
        problems += [f"{k!r} has shape {own[k].shape}; the state dict gives {a.shape}"
                     for k, a in arrays.items() if a.shape != own[k].shape]
        if problems:
            raise ParameterShapeError(f"cannot load the state dict into {type(self).__name__}:\n  "
                                      + "\n  ".join(problems))
        for k, a in arrays.items():
            own[k][...] = a
        return missing, unexpected

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Re-draw this module's own parameters (not its children's) with PyTorch's default init."""

    def init_parameters(self, seed: int | None = None) -> Module:
        """Re-initialise every layer in module order from ``seed`` (the global generator when None)."""
        rng = np.random.default_rng(seed) if seed is not None else default_generator()
        for m in self.modules():
            m.reset_parameters(rng)
        return self

    # --- tracing --------------------------------------------------------------------------
    def forward(self, *inputs: SymbolicTensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, SymbolicTensor):
                return a.tracer.call_module(self, args, kwargs)
        if args and not kwargs and all(isinstance(a, np.ndarray) for a in args):
            return self._run_reference(*args)
        raise ModelDefinitionError(f"call {type(self).__name__} on traced tensors (inside a forward()) or on numpy "
                                   f"arrays, got {[type(a).__name__ for a in args]}")

    def _run_reference(self, *arrays: np.ndarray) -> Any:
        from convc.reference import run_reference
        g = self.to_graph([a.shape for a in arrays])
        outs = run_reference(g, {n: np.asarray(a, dtype=np.float32) for n, a in zip(g.inputs, arrays)})
        values = [outs[n] for n in g.outputs]
        return values[0] if len(values) == 1 else tuple(values)

    def trace(self, input_shape: InputShape, *, batch: int | None = None, name: str | None = None) -> Tracer:
        """Run ``forward`` on symbolic inputs; the tracer holds the graph and the per-layer rows."""
        shapes = input_shapes(input_shape, batch)
        names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(len(shapes))]
        with Tracer(self, name or type(self).__name__) as tracer:
            xs = [tracer.add_input(n, s) for n, s in zip(names, shapes)]
            tracer.finish(self(*xs))
        return tracer

    def to_graph(self, input_shape: InputShape, *, batch: int | None = None, name: str | None = None) -> Graph:
        """The traced convc Graph: input "input" (or "input0", ...) of ``input_shape`` (batch first;
        ``batch`` replaces it), output "output", parameters and buffers as constants named by the state dict."""
        return self.trace(input_shape, batch=batch, name=name).graph

    def summarize(self, input_shape: InputShape) -> Summary:
        """Per-layer output shapes, parameter counts and MACs as data (see ``summary`` for the table)."""
        from convc.frontend.dsl.summary import summarize
        return summarize(self, input_shape)

    def summary(self, input_shape: InputShape) -> str:
        """A table of every layer call: output shape, parameters and MACs, with totals at the bottom."""
        return str(self.summarize(input_shape))

    def print_summary(self, input_shape: InputShape) -> None:
        print(self.summary(input_shape))

    def compile(self, input_shape: InputShape, **options: Any) -> CompiledModel:
        """``convc.compile(self, input_shape=input_shape, **options)``."""
        from convc.compiler import compile
        return compile(self, input_shape=input_shape, **options)

    def to_onnx(self, path: str | os.PathLike | None, input_shape: InputShape, *, opset: int | None = None,
                dynamic_batch: bool = True) -> onnx.ModelProto:
        """Write the traced model as ONNX (opset 13 unless ``opset`` says otherwise); the batch dimension
        is symbolic ("N") when ``dynamic_batch``. Returns the ModelProto; ``path=None`` skips writing."""
        import onnx

        from convc.frontend.onnx_export import export_onnx
        model = export_onnx(self.to_graph(input_shape), opset=opset, dynamic_batch=dynamic_batch)
        if path is not None:
            onnx.save(model, os.fspath(path))
        return model

    def snapshot(self) -> Module:
        """A deep copy: later edits to this model's parameters do not reach it."""
        return copy.deepcopy(self)

    # --- printing ---------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def input_shapes(input_shape: InputShape, batch: int | None = None) -> list[tuple[int, ...]]:
    """One shape (a tuple of ints) or several (a sequence of tuples), batch first, validated."""
    if input_shape is None:
        raise ModelDefinitionError("tracing a convc.nn model needs input_shape, e.g. input_shape=(1, 3, 32, 32)")
    items = list(input_shape)
    shapes = [items] if not items or not isinstance(items[0], (tuple, list)) else items
    out = []
    for s in shapes:
        if not s or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in s):
            raise ModelDefinitionError(f"input shape {tuple(s)} must be a non-empty tuple of positive ints "
                                       "(batch first)")
        s = tuple(int(d) for d in s)
        if batch is not None:
            s = (int(batch),) + s[1:]
        out.append(s)
    return out
