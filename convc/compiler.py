"""convc.compile: model in, native callable out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from convc.ir import Graph
from convc.runtime import IOSpec, NativeRunner, PoolApi
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
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    if not isinstance(model, onnx.ModelProto):
        return False
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
                  override: Callable[[frozenset[str]], CompiledModel] | None = None) -> CompiledModel:
    from convc.codegen.jit import JitEngine
    from convc.codegen.module import ENTRY, emit_module
    from convc.passes.pipeline import pipeline
    plan = pipeline(graph, progress=progress)
    if progress:
        progress("code generation")
    threads = default_threads() if threads is None else max(1, int(threads))
    native = emit_module(plan, name=graph.name, instrument=instrument, threads=threads)
    if progress:
        progress("LLVM optimization and machine code")
    engine = JitEngine(str(native.ir_module))
    g = plan.graph
    specs = lambda names: [IOSpec(n, g.tensor(n).shape, g.tensor(n).dtype) for n in names]  # noqa: E731
    runner = NativeRunner(engine.address(ENTRY), native.arena_bytes, native.constants,
                          specs(native.input_names), specs(native.output_names), keepalive=engine,
                          kernel_names=[op for op, _ in native.kernel_names], instrumented=instrument,
                          threads=threads, pool_api=PoolApi.from_addresses(engine.address("convc_pool_create"),
                                                                           engine.address("convc_pool_destroy")))
    return CompiledModel(runner, g, threads=threads, respecialize=respecialize, override=override)


def compile(model: ModelSource, *, threads: int | None = None, batch: int | None = None,
            progress: Callable[[str], None] | None = None, input_shape: Any = None) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ``onnx.ModelProto``), a convc Graph or a convc.nn Module
    (traced with ``input_shape``, batch first) to native code.

    ``batch`` fixes a symbolic batch dimension; left as None, the model compiles for batch 1 (a
    Module: for ``input_shape[0]``) and compiles other batch sizes on first use. ``threads`` caps
    the worker threads (default: all cores).

    ONNX initializers that are also graph inputs compile in as constants (their defaults); feeding
    one to ``run`` compiles, on first use, a variant that reads the fed ones at run time."""
    if isinstance(model, Path):
        model = str(model)
    if progress:
        progress("import")
    if is_nn_module(model):
        model = model.snapshot()  # later edits to the parameters must not reach variants compiled on first use
    graph = load_graph(model, batch, input_shape)
    onnx_source = not isinstance(model, Graph) and not is_nn_module(model)

    def variant(n: int | None, runtime: frozenset[str]) -> CompiledModel:
        return compile_graph(load_graph(model, n, input_shape, runtime), threads=threads,
                             override=(lambda names: variant(n, runtime | names)) if onnx_source else None)
    respecialize = None
    if batch is None and (is_nn_module(model) or (onnx_source and has_dynamic_batch(model))):
        def respecialize(n: int) -> CompiledModel:
            return variant(n, frozenset())
    return compile_graph(graph, threads=threads, progress=progress, respecialize=respecialize,
                         override=(lambda names: variant(batch, names)) if onnx_source else None)
