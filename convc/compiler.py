"""convc.compile: model in, native callable out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from convc.ir import Graph
from convc.limits import positive_int
from convc.session import CompiledModel

ModelSource = Any  # path, bytes, onnx.ModelProto, Graph or convc.nn Module


def is_nn_module(model: ModelSource) -> bool:
    from convc.frontend.dsl.module import Module
    return isinstance(model, Module)


def load_graph(model: ModelSource, batch: int | None = None, input_shape: Any = None,
               runtime: frozenset[str] = frozenset()) -> Graph:
    """The Graph of ``model``; ``runtime`` names ONNX initializers listed as inputs to import as run-time inputs."""
    if isinstance(model, Graph):
        return model
    if is_nn_module(model):
        return model.to_graph(input_shape, batch=batch)
    from convc.frontend.onnx import import_onnx
    return import_onnx(model, batch=batch, runtime=runtime)


def has_dynamic_batch(model: ModelSource) -> bool:
    """True when the ONNX model's first input leaves its batch dimension symbolic."""
    import onnx

    from convc.frontend.onnx.reader import read_model
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto)):
        return False
    model = read_model(model, external_data=False)  # the structure only; ModelImportError for anything unreadable
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        return bool(dims) and not dims[0].HasField("dim_value")
    return False


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compile_graph(graph: Graph, *, threads: int | None = None, instrument: bool = False,
                  progress: Callable[[str], None] | None = None,
                  respecialize: Callable[[int], CompiledModel] | None = None,
                  override: Callable[[frozenset[str]], CompiledModel] | None = None,
                  cache: bool | None = None, alias: str | None = None) -> CompiledModel:
    """Optimize ``graph`` and JIT-compile it through the compile cache (convc/codegen/cache.py;
    ``cache=False`` bypasses it; ``alias`` is a source hash that will also name the entry)."""
    from convc.codegen.cache import compile_plan
    from convc.passes.pipeline import pipeline
    threads = positive_int("threads", threads) or default_threads()
    plan = pipeline(graph, progress=progress)
    return compile_plan(plan, threads=threads, instrument=instrument, progress=progress, cache=cache, alias=alias,
                        respecialize=respecialize, override=override)


def compile(model: ModelSource, *, threads: int | None = None, batch: int | None = None,
            progress: Callable[[str], None] | None = None, input_shape: Any = None,
            cache: bool | None = None) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ``onnx.ModelProto``), a convc Graph or a convc.nn Module
    (traced with ``input_shape``, batch first) to native code.

    ``batch`` fixes a symbolic batch dimension; left as None, the model compiles for batch 1 (a
    Module: for ``input_shape[0]``) and compiles other batch sizes on first use. ``threads`` caps
    the worker threads (default: all cores).

    ONNX initializers that are also graph inputs compile in as constants (their defaults); feeding
    one to ``run`` compiles, on first use, a variant that reads the fed ones at run time.

    Compiled code is kept in an on-disk cache (``~/.cache/convc``, ``$CONVC_CACHE_DIR``); a model
    compiled before loads in well under a second. ``cache=False`` (or ``CONVC_NO_CACHE=1``) skips it.
    ``progress`` receives a line per stage (passes, each layer's code generation, LLVM)."""
    # refused, not rounded or clamped: batch=2.5 or threads=0 is a mistake the caller should hear about
    batch, threads = positive_int("batch", batch), positive_int("threads", threads)
    if isinstance(model, Path):
        model = str(model)
    if progress:
        progress("import")
    if is_nn_module(model):
        model = model.snapshot()  # later edits to the parameters must not reach variants compiled on first use
    onnx_source = not isinstance(model, Graph) and not is_nn_module(model)

    def variant(n: int | None, runtime: frozenset[str]) -> CompiledModel:
        return compile_graph(load_graph(model, n, input_shape, runtime), threads=threads, cache=cache,
                             override=(lambda names: variant(n, runtime | names)) if onnx_source else None)
    respecialize = None
    if batch is None and (is_nn_module(model) or (onnx_source and has_dynamic_batch(model))):
        def respecialize(n: int) -> CompiledModel:
            return variant(n, frozenset())
    override = (lambda names: variant(batch, names)) if onnx_source else None
    from convc.codegen.cache import warm_model  # a model compiled before: no import, passes or codegen
    hit, alias = warm_model(model, batch, input_shape, threads, cache, progress, respecialize, override)
    if hit is not None:
        return hit
    graph = load_graph(model, batch, input_shape)
    return compile_graph(graph, threads=threads, progress=progress, respecialize=respecialize, override=override,
                         cache=cache, alias=alias)
