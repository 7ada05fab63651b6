"""The compiled model users call: what the driver (convc/driver.py) and ``convc.load`` build.

It sits below the API and the driver, beside the runtime it calls (convc/runtime.py): the driver
builds one from a JIT artifact and ``convc.load`` from a library without importing each other or
the user-facing modules (``convc.session`` re-exports it). What a model needs from above comes
in as data when it is built: the closures that compile variants on first use, and the function
that restores it from a pickle (``restore``: a module-level function of whoever built it).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from convc.errors import GraphError, InputError, ModelImportError
from convc.limits import check_size, max_variants
from convc.runtime import IOSpec, NativeRunner


Dim = int | str | None  # an input dimension: a size, or free (its symbol's name, None when it has none)


def _show(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


class CompiledModel:
    """A model compiled to native code. numpy arrays in, numpy arrays out.

    ``run(feeds)`` maps input names to arrays and returns a dict of outputs; calling the model with
    positional arrays returns one array (or a tuple when the model has several outputs). When some
    input dimensions are symbolic and were not fixed (``batch``, ``input_shapes``), a new input
    shape compiles a specialized variant on first use and keeps it (at most ``max_variants()``,
    convc/limits.py). A model whose symbolic dimensions have no default (height and width) has no
    code of its own: its first run compiles the first variant.

    ONNX initializers listed as graph inputs (``overridable``) are compiled in as constants; feeding
    some of them to ``run`` overrides their defaults, as ONNX specifies: a variant reading those
    names at run time compiles on first use (one per set of names) and is kept."""

    def __init__(self, runner: NativeRunner | None, graph, threads: int | None = None,
                 respecialize: Callable[[dict[str, tuple[int, ...]]], "CompiledModel"] | None = None,
                 override: Callable[[frozenset[str]], "CompiledModel"] | None = None, *,
                 artifact: Any = None, restore: Callable[[dict, int | None], "CompiledModel"] | None = None,
                 signature: Mapping[str, tuple[Dim, ...]] | None = None, outputs: Sequence[IOSpec] = ()):
        self._runner = runner
        # pickling: ``artifact.state()`` is the compiled code as data, ``restore(state, threads)``
        # (a module-level function of the driver or convc.load) rebuilds the model from it
        self._artifact = artifact
        self._restore = restore
        self.graph = graph  # the optimized graph the native code was generated from
        self.threads = threads
        # ``respecialize(shapes)`` compiles the model for these shapes of the inputs with free
        # dimensions. ``signature``: each input's dimensions, sizes where fixed and symbols where free
        # (default: the first input's batch is free); ``outputs``: the declared outputs of a model
        # without code (``runner`` None) until its first run
        self._respecialize = respecialize
        if signature is None and respecialize is not None and runner is not None and runner.inputs:
            first = runner.inputs[0]
            signature = {first.name: (None, *first.shape[1:])} if first.shape else {}
        self._signature = dict(signature or {})
        self._free = {n: dims for n, dims in self._signature.items() if any(not isinstance(d, int) for d in dims)}
        self._declared_outputs = list(outputs)
        self._variants: dict[tuple, CompiledModel] = {}
        self._override = override
        self._overridden: dict[frozenset[str], CompiledModel] = {}
        if runner is None and respecialize is None:
            raise ValueError("a CompiledModel without code needs respecialize")

    @property
    def overridable(self) -> list[str]:
        """Graph inputs with a default (an ONNX initializer) that this variant compiled in as constants."""
        if self._runner is None:
            return []
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
        if self._runner is None:
            raise InputError("this model is not compiled yet (its input shapes are symbolic): run it once first")
        self._runner.bind(arrays)

    @property
    def compiled(self) -> bool:
        """False for a model with symbolic input dimensions and no default for them (such as height
        and width): it compiles on its first run, for the shapes fed."""
        return self._runner is not None

    @property
    def inputs(self) -> list[IOSpec]:
        """The inputs; before a model without code is first run, free dimensions show as their
        symbols' names (None when unnamed), as onnxruntime shows them."""
        if self._runner is None:
            return [IOSpec(n, tuple(dims), np.dtype(np.float32)) for n, dims in self._signature.items()]
        return list(self._runner.inputs)

    @property
    def outputs(self) -> list[IOSpec]:
        if self._runner is None:
            return list(self._declared_outputs)
        return list(self._runner.outputs)

    @property
    def arena_bytes(self) -> int:
        """The bytes of the activation arena the native code runs in (kernel scratch included)."""
        return self._runner.arena_bytes

    @property
    def batch(self) -> int | None:
        if self._runner is None:
            return None
        return self._runner.inputs[0].shape[0] if self._runner.inputs and self._runner.inputs[0].shape else None

    def _fed_shapes(self, feeds: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """The fed shapes of the inputs with free dimensions; None when a feed cannot run on any
        variant and this model's own input check should say why (a model without code says it here)."""
        if self._runner is None:
            missing = [n for n in self._signature if n not in feeds]
            extra = [k for k in feeds if k not in self._signature]
            if missing or extra:  # as NativeRunner.check words it
                parts = ([f"missing input(s) {missing}"] if missing else []) + ([f"unknown input(s) {extra}"]
                                                                              if extra else [])
                raise InputError("; ".join(parts) + f"; the model takes {list(self._signature)}")
        shapes = {}
        for name, dims in self._free.items():
            a = feeds.get(name)
            if a is None:
                return None
            shape = tuple(np.shape(a))
            dtype = getattr(a, "dtype", None)
            if dtype is not None and dtype != np.float32 or len(shape) != len(dims) or any(
                    isinstance(d, int) and d != n for d, n in zip(dims, shape)):
                if dtype is not None and dtype != np.float32:
                    if self._runner is not None:
                        return None  # the input check words it; do not compile a variant first
                    from convc.runtime import dtype_error
                    raise dtype_error(f"input {name!r}", np.dtype(dtype), np.dtype(np.float32))
                # the declared dimensions, not the shape of the variant compiled first: a free batch
                # or size is not part of what the caller got wrong
                raise InputError(f"input {name!r} has shape {shape}, expected {_show(dims)}")
            shapes[name] = tuple(int(n) for n in shape)
        return shapes

    def _describe(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        """The fed shapes in an error: ``input 'x' has batch 64`` when only batches are free."""
        if all(i == 0 for dims in self._free.values() for i, d in enumerate(dims) if not isinstance(d, int)):
            name = next(iter(shapes))
            return f"input {name!r} has batch {shapes[name][0]}"
        return "; ".join(f"input {n!r} has shape {s}" for n, s in shapes.items())

    def _variant_for(self, feeds: Mapping[str, Any]) -> "CompiledModel":
        if self._respecialize is None or not self._free:
            return self
        shapes = self._fed_shapes(feeds)
        if shapes is None:
            return self
        if self._runner is not None:
            own = {s.name: s.shape for s in self._runner.inputs}
            if all(own.get(n) == s for n, s in shapes.items()):
                return self
        sizes: dict[str, tuple[int, str]] = {}
        for name, shape in shapes.items():
            dims = self._free[name]
            for i, (d, n) in enumerate(zip(dims, shape)):
                if isinstance(d, int):
                    continue
                if n < 1:
                    if i == 0:
                        raise InputError(f"input {name!r} has shape {shape}: a batch of {n}; the batch must be at "
                                         "least 1")
                    raise InputError(f"input {name!r} has shape {shape}: dimension {i} ({d or '?'}) is {n}; it must "
                                     "be at least 1")
                if isinstance(d, str):
                    seen = sizes.setdefault(d, (n, name))
                    if seen[0] != n:
                        raise InputError(f"inputs {seen[1]!r} and {name!r} share dimension {d!r}, but are fed "
                                         f"{seen[0]} and {n} for it ({name!r} has shape {shape})")
            # a feed of batch 2**31 (a broadcast view costs nothing) must not compile a model needing TiBs
            check_size(f"input {name!r}", shape, np.float32, InputError)
        key = tuple(shapes.items())
        if key not in self._variants:
            limit, source = max_variants()
            if len(self._variants) >= limit:
                raise InputError(f"{self._describe(shapes)}: the model already compiled {len(self._variants)} "
                                 f"variants for other input shapes, the most it keeps ({source}); fix the shape "
                                 "when compiling (batch=, input_shapes=; --batch, --input-shape) or compile a "
                                 "model per shape")
            try:
                self._variants[key] = self._respecialize(dict(shapes))
            except (ModelImportError, GraphError) as e:  # this shape, not the model, is the problem
                raise InputError(f"{self._describe(shapes)}; the model cannot be built for it: {e}") from e
        return self._variants[key]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self._respecialize is None and self._free:
            chunked = self._run_chunked(feeds)
            if chunked is not None:
                return chunked
        model = self._variant_for(feeds)._override_for(feeds)
        outs = model._runner.run(model._runner.check(feeds))
        return {s.name: o for s, o in zip(model._runner.outputs, outs)}

    def _batch_variants(self) -> dict[int, "CompiledModel"]:
        """The compiled code by batch size: this model's own and its variants that differ from it
        only in the batch."""
        own = {s.name: s.shape for s in self._runner.inputs}
        found = {self.batch: self}
        for key, variant in self._variants.items():
            shapes = dict(key)
            if all(n in own and s[1:] == own[n][1:] for n, s in shapes.items()):
                found.setdefault(shapes[next(iter(shapes))][0], variant)
        return found

    def _run_chunked(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """A model that cannot compile (unpickled, or loaded from a library) fed a batch it has no
        code for: the batch runs in chunks over the compiled batch sizes (``chunk_plan``) and the
        outputs are concatenated; None when the feed is not such a batch (the input check says why)."""
        if any(i != 0 for dims in self._free.values() for i, d in enumerate(dims) if not isinstance(d, int)):
            return None  # chunking splits the batch only
        shapes = self._fed_shapes(feeds)
        if not shapes or len({s[0] for s in shapes.values()}) != 1:
            return None
        n = next(iter(shapes.values()))[0]
        variants = self._batch_variants()
        own = {s.name: s.shape for s in self._runner.inputs}
        if n < 1 or any(s[1:] != own[name][1:] for name, s in shapes.items()):
            return None
        if n in variants:
            return None if variants[n] is self else variants[n].run(feeds)
        if any(not o.shape or o.shape[0] != self.batch for o in self._runner.outputs):
            raise InputError(f"{self._describe(shapes)}: this model has code for batches "
                             f"{sorted(variants)} only and cannot compile here (it was unpickled or loaded), and its "
                             "outputs are not batch-first, so it cannot run the batch in chunks")
        parts: list[list[np.ndarray]] = []
        for start, count, size in chunk_plan(n, list(variants)):
            chunk = {}
            for name, a in feeds.items():
                if name in shapes:
                    a = np.asarray(a)[start:start + count]
                    if count < size:
                        a = np.concatenate([a, np.zeros((size - count,) + a.shape[1:], a.dtype)])
                chunk[name] = a
            out = variants[size].run(chunk)
            parts.append([o[:count] for o in out.values()])
        names = [s.name for s in self._runner.outputs]
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}

    def compile_batches(self, *sizes: int) -> "CompiledModel":
        """Compile the batch variants ``sizes`` now (a model with a free batch), so that a pickle of
        this model carries them: unpickled where nothing compiles, it runs any batch in chunks of
        the sizes it has. Returns the model."""
        if self._runner is None or set(self._free) != {self._runner.inputs[0].name} or \
                any(not isinstance(d, int) for d in self._free[self._runner.inputs[0].name][1:]):
            raise InputError("compile_batches needs a compiled model whose batch (only) is free (batch=None)")
        if self._respecialize is None:
            raise InputError("this model cannot compile (it was unpickled or loaded from a library); compile the "
                             "batches before pickling it")
        spec = self._runner.inputs[0]
        for size in sizes:
            n = int(size)
            self._variant_for({spec.name: np.broadcast_to(np.float32(0), (n,) + spec.shape[1:])})
        return self

    def run_timed(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Outputs plus seconds per layer (op name -> s); needs ``compile_graph(..., instrument=True)``."""
        model = self._variant_for(feeds)
        outs, times = model._runner.run_timed(model._runner.check(feeds))
        return {s.name: o for s, o in zip(model._runner.outputs, outs)}, times

    def __call__(self, *arrays: np.ndarray):
        inputs = self.inputs
        if len(arrays) != len(inputs):
            raise InputError(f"the model takes {len(inputs)} input(s) {[s.name for s in inputs]}, got "
                             f"{len(arrays)} array(s)")
        outs = list(self.run({s.name: a for s, a in zip(inputs, arrays)}).values())
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.inputs)
        out = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.outputs)
        return f"<convc.CompiledModel ({sig}) -> ({out})>"

    def __reduce__(self):
        """Pickle by value, for worker processes (multiprocessing, Ray, Dask): a JIT model as its
        machine code and weights, a model from ``convc.load`` as its library; unpickling loads the
        code without compiling (``restore``: convc/driver.py for JIT code, convc/load.py
        for a library). A model with a free batch also carries its input signature and the batch
        variants it compiled so far (``compile_batches``): unpickled, it runs any batch over them
        (``_run_chunked``), since a worker has no source to compile from."""
        artifact, restore = getattr(self, "_artifact", None), getattr(self, "_restore", None)
        if getattr(self, "_runner", True) is None:
            raise TypeError("this CompiledModel cannot be pickled: it has no code yet (its input shapes are "
                            "symbolic and compile on first run); compile it with input_shapes= to pickle it")
        if artifact is None or restore is None:
            raise TypeError("this CompiledModel cannot be pickled: only models from convc.compile and convc.load "
                            "carry their compiled code")
        state = artifact.state()
        if getattr(self, "_free", None):
            state = {**state, "signature": self._signature,
                     "variants": [(key, v) for key, v in self._variants.items() if v._runner is not None]}
        return restore, (state, self.threads)


def adopt_pickled(model: CompiledModel, state: Mapping[str, Any]) -> CompiledModel:
    """Give a model just restored from ``state`` (``CompiledModel.__reduce__``) the free input
    signature and the batch variants it was pickled with; it cannot compile others."""
    signature = state.get("signature")
    if not isinstance(signature, dict):
        return model
    model._signature = dict(signature)
    model._free = {n: dims for n, dims in model._signature.items() if any(not isinstance(d, int) for d in dims)}
    for key, variant in state.get("variants") or ():
        if isinstance(variant, CompiledModel) and variant._runner is not None:
            model._variants[tuple(key)] = variant
    return model


def chunk_plan(n: int, sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """How a batch of ``n`` runs on code compiled for the batch ``sizes``: (start, count, size)
    chunks, each the largest compiled size that fits what is left; a rest smaller than every size
    runs padded with zeros on the smallest (samples never mix, so padding changes no result)."""
    sizes = sorted(set(sizes))
    plan, start = [], 0
    while start < n:
        rest = n - start
        fits = [s for s in sizes if s <= rest]
        size = fits[-1] if fits else sizes[0]
        count = min(size, rest)
        plan.append((start, count, size))
        start += count
    return plan
