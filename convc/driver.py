"""The driver: between the user-facing API and the compiler.

    convc API (compile, InferenceSession, Trainer, load, profile, CLI)
       -> driver (this module)
          -> frontend -> passes -> codegen -> runtime/ABI

The API resolves its keyword arguments once into a frozen ``CompileOptions`` (convc/options.py)
and calls the driver. The driver owns what needs both ends: loading a model into a Graph
(frontend), the compile cache look-up by source hash, the pipeline, asking codegen for an artifact
(``codegen.cache.compile_plan``: a plan and options in, a ``JitArtifact`` out), and turning that
artifact into the ``CompiledModel`` users call, with the variants compiled on first use (another
batch size, overridden ONNX initializers). codegen never calls back up: the closures that compile
variants live here and are handed to the CompiledModel, not to codegen.

Training goes the same way: ``load_forward`` is ``load_graph`` plus training's checks, the training
step and the eval forward on the training state are pipeline variants (passes/pipeline.py), and
``compile_plan`` turns any plan into a CompiledModel through the one cache and runner; a training
library is built by codegen/aot.py's path with codegen/aot_train.py's C ABI.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convc.artifact import LazyGraph, io_specs
from convc.errors import InputError
# every compile runs without numpy's huge-page advice: it made the kernel compact memory at each
# page fault of the weights (convc/huge_pages.py)
from convc.huge_pages import without_huge_page_advice
from convc.limits import positive_int
from convc.options import CompileOptions, run_threads
from convc.model import CompiledModel

if TYPE_CHECKING:
    from convc.ir import Graph

ModelSource = Any  # path, bytes, onnx.ModelProto, Graph or convc.nn Module
Progress = Callable[[str], None] | None


# --- models in -------------------------------------------------------------------------------------

def is_nn_module(model: ModelSource) -> bool:
    return _instance(model, "convc.frontend.dsl.module", "Module")


def is_graph(model: ModelSource) -> bool:
    return _instance(model, "convc.ir", "Graph")


def _instance(model: ModelSource, module: str, cls: str) -> bool:
    """``isinstance(model, module.cls)`` without importing ``module``: an object of that class
    exists only once its module is imported, and a warm compile or an unpickled model must not
    import the IR (networkx) or the DSL just to ask."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(model, getattr(mod, cls))


def load_graph(model: ModelSource, batch: int | None = None, input_shape: Any = None,
               runtime: frozenset[str] = frozenset(), *, input_shapes: Any = None) -> Graph:
    """The Graph of ``model`` (the one loader of inference and training); ``runtime`` names ONNX
    initializers listed as inputs to import as run-time inputs; ``input_shapes`` fixes an ONNX
    model's input shapes (frontend/onnx/signature.py)."""
    if input_shapes is not None and not is_onnx_source(model):
        raise InputError("input_shapes= fixes the symbolic dimensions of an ONNX model's inputs; a convc.nn "
                         "Module takes input_shape=, a Graph's shapes are fixed")
    if is_graph(model):
        return model
    if is_nn_module(model):
        return model.to_graph(input_shape, batch=batch)
    from convc.frontend.onnx import import_onnx
    return import_onnx(str(model) if isinstance(model, Path) else model, batch=batch, runtime=runtime,
                       input_shapes=input_shapes)


def is_onnx_source(model: ModelSource) -> bool:
    """An ONNX model: a path, serialized bytes or a ModelProto (or one read already: ReadModel)."""
    import onnx

    from convc.frontend.onnx.reader import ReadModel
    return isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto, ReadModel))


def input_signature(model: ModelSource, batch: int | None = None, input_shapes: Any = None):
    """An ONNX model's ``input_shapes`` checked against its declared inputs and ``batch`` (an
    InputError naming the input and its dimensions); returns them normalized, each input's
    dimensions once they applied (sizes where fixed, symbols where still free) and the declared
    outputs as IOSpecs (symbols they fix replaced by sizes): frontend/onnx/signature.py."""
    import numpy as np
    import onnx

    from convc.frontend.onnx.reader import read_model
    from convc.frontend.onnx.signature import check_input_shapes, declared_inputs, resolved_inputs
    from convc.runtime import IOSpec
    proto = read_model(str(model) if isinstance(model, Path) else model, external_data=False)  # the structure only
    declared = declared_inputs(proto)
    shapes = check_input_shapes(declared, input_shapes, batch)
    resolved = resolved_inputs(declared, shapes, batch)
    sizes = {d: n for name, dims in declared.items() for d, n in zip(dims or (), resolved.get(name, ()))
             if isinstance(d, str) and isinstance(n, int)}
    outputs = []
    for vi in proto.graph.output:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, d.dim_param or None)
                     for d in tt.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32)
        except (KeyError, ValueError, TypeError):
            dtype = np.dtype(np.float32)
        outputs.append(IOSpec(vi.name, dims, dtype))
    return shapes, resolved, outputs


def load_shaped(model: ModelSource, batch: int | None, input_shape: Any, input_shapes: Any) -> Graph:
    """``load_graph`` with ``input_shapes``: a model that cannot be built for the shapes given (a
    kernel larger than the image) is an InputError naming them."""
    from convc.errors import GraphError, ModelImportError, UnsupportedOpError
    try:
        return load_graph(model, batch, input_shape, input_shapes=input_shapes or None)
    except UnsupportedOpError:
        raise
    except (ModelImportError, GraphError) as e:
        if not input_shapes:
            raise
        shown = "; ".join(f"dimension {n!r} is {s}" if isinstance(s, int) else f"input {n!r} has shape {tuple(s)}"
                          for n, s in input_shapes.items())
        raise InputError(f"{shown}; the model cannot be built for it: {e}") from e


def has_dynamic_batch(model: ModelSource) -> bool:
    """True when the ONNX model's first input leaves its batch dimension symbolic."""
    flags = _symbolic_batch(model)
    return bool(flags) and next(iter(flags.values()))


def dynamic_batch_inputs(model: ModelSource) -> list[str]:
    """The ONNX model's inputs whose batch dimension is symbolic, in input order."""
    return [name for name, free in _symbolic_batch(model).items() if free]


def _symbolic_batch(model: ModelSource) -> dict[str, bool]:
    """Per input of an ONNX model (initializers listed as inputs aside): is its first dimension
    symbolic? Empty for anything but an ONNX source."""
    import onnx

    from convc.frontend.onnx.reader import read_model
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto)):
        return {}
    model = read_model(model, external_data=False)  # the structure only; ModelImportError for anything unreadable
    inits = {i.name for i in model.graph.initializer}
    flags = {}
    for inp in model.graph.input:
        if inp.name not in inits:
            dims = inp.type.tensor_type.shape.dim
            flags[inp.name] = bool(dims) and not dims[0].HasField("dim_value")
    return flags


# --- artifacts out ---------------------------------------------------------------------------------

def model_from_artifact(artifact, *, threads: int | None = None, graph: Any = None,
                        graph_factory: Callable[[], Any] | None = None,
                        respecialize: Callable[[dict], CompiledModel] | None = None,
                        override: Callable[[frozenset[str]], CompiledModel] | None = None,
                        signature: Mapping[str, tuple] | None = None) -> CompiledModel:
    """A CompiledModel running a JitArtifact's object code (no LLVM optimization or codegen), with
    at most the threads it was compiled for. Without ``graph``, ``CompiledModel.graph`` is a
    LazyGraph that ``graph_factory`` (import and passes) builds on first use."""
    from convc.abi import ENTRY
    from convc.codegen.entry import engine_for
    from convc.runtime import NativeRunner, PoolApi
    meta = artifact.meta
    engine = engine_for(artifact)
    threads = run_threads(threads, meta["threads"])
    runner = NativeRunner(engine.address(ENTRY), int(meta["arena_bytes"]), artifact.constants,
                          io_specs(meta["inputs"]), io_specs(meta["outputs"]), keepalive=engine,
                          kernel_names=meta.get("kernel_names", ()), instrumented=bool(meta.get("instrumented")),
                          threads=threads, pool_api=PoolApi.from_symbols(engine.address))
    if artifact.arena_steps is not None:  # an arena-checked build (codegen/arena_check.py)
        from convc.codegen.arena_check import FAULT_SYMBOL, raise_fault
        runner.arena_check = functools.partial(raise_fault, engine.global_address(FAULT_SYMBOL), artifact.arena_steps)
    if graph is None:
        graph = LazyGraph(meta.get("name", "model"), meta.get("graph_metadata"), graph_factory,
                          why_not="it was restored from compiled code (a pickle)")
    return CompiledModel(runner, graph, threads=threads, respecialize=respecialize, override=override,
                         artifact=artifact, restore=restore_model, signature=signature)


def restore_model(state: dict, threads: int | None) -> CompiledModel:
    """Unpickle a JIT-compiled model (``JitArtifact.state()``): its object code is loaded as it is,
    nothing compiles."""
    from convc.artifact import LoadError
    from convc.codegen.entry import CorruptEntry, entry_artifact
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "jit":
        raise LoadError("cannot unpickle the compiled model: it was pickled by an older convc (unchecked code "
                        "and weights); pickle it again with this version")
    if kind != "jit-entry":
        raise LoadError(f"cannot unpickle a JIT-compiled model from a state of kind {kind!r}")
    try:
        artifact = entry_artifact(state["entry"])
    except (CorruptEntry, KeyError, TypeError, ValueError) as e:
        raise LoadError(f"cannot unpickle the compiled model: its code and weights are damaged ({e})") from None
    from convc.model import adopt_pickled
    return adopt_pickled(model_from_artifact(artifact, threads=threads), state)


# --- JIT compiles ----------------------------------------------------------------------------------

@without_huge_page_advice()
def compile_plan(plan, options: CompileOptions, *, progress: Progress = None,
                 respecialize: Callable[[dict], CompiledModel] | None = None,
                 override: Callable[[frozenset[str]], CompiledModel] | None = None,
                 alias: str | None = None, signature: Mapping[str, tuple] | None = None) -> CompiledModel:
    """JIT-compile a plan of any pipeline variant (inference, a training step, the eval forward on
    the training state) through the compile cache (``alias`` is a source hash that will also name
    the entry) into a CompiledModel."""
    from convc.codegen.cache import compile_plan as compile_artifact
    artifact = compile_artifact(plan, options, progress=progress, alias=alias,
                                signature=dict(signature) if signature is not None and alias else None)
    return model_from_artifact(artifact, threads=options.threads, graph=plan.graph, respecialize=respecialize,
                               override=override, signature=signature)


def compile_bound(plan, state: Mapping[str, Any], options: CompileOptions, progress: Progress = None) -> CompiledModel:
    """``compile_plan``, with the model's inputs that ``state`` names bound to its arrays (a
    training variant's plan: the parameters, running statistics and optimizer state, which the
    native code reads and updates in place); the model is then called with the other inputs."""
    model = compile_plan(plan, options, progress=progress)
    model.bind({s.name: state[s.name] for s in model.inputs if s.name in state})
    return model


def compile_graph(graph: Graph, options: CompileOptions, *, progress: Progress = None,
                  respecialize: Callable[[dict], CompiledModel] | None = None,
                  override: Callable[[frozenset[str]], CompiledModel] | None = None,
                  alias: str | None = None, signature: Mapping[str, tuple] | None = None) -> CompiledModel:
    """Optimize ``graph`` (the inference pipeline) and JIT-compile it through the compile cache."""
    from convc.passes.pipeline import pipeline
    return compile_plan(pipeline(graph, progress=progress, options=options), options, progress=progress,
                        respecialize=respecialize, override=override, alias=alias, signature=signature)


def source_alias(model: ModelSource, batch: int | None, input_shape: Any, input_shapes: Any,
                 options: CompileOptions) -> str | None:
    """The compile cache's name for this source compiled with these options (a hash of the model's
    bytes; None for a source that cannot be hashed cheaply)."""
    from convc.codegen.cache_key import environment, source_key
    # the options that change the plan besides the threads: a Winograd or bf16 compile is another entry
    env = environment(options.threads) | {"winograd": options.winograd, "precision": options.precision}
    # fixed input shapes are part of the key (left out without any, so earlier entries stay valid)
    shape_key = (input_shape, sorted(input_shapes.items())) if input_shapes else input_shape
    return source_key(model, batch, shape_key, env)


def warm_model(model: ModelSource, batch: int | None, input_shape: Any, options: CompileOptions,
               progress: Progress = None, respecialize=None, override=None, input_shapes=None, signature=None,
               alias: str | None = None, data: Any = None):
    """``convc.compile``'s fast path: (the cached model named by the source's hash or None, that hash).

    The hash covers the ONNX bytes (``data``: the model file as read, a convc.model_file.ModelBytes)
    and every option (``alias``: already computed); the returned model's ``graph`` is rebuilt (import
    and passes, no codegen) only when something reads it."""
    from convc.codegen.entry import CacheWarning, cache_dir, cached_artifact
    root = cache_dir(options.cache)
    if root is None or is_graph(model):
        return None, None
    alias = alias or source_alias(model if data is None else data, batch, input_shape, input_shapes, options)
    if alias is None:
        return None, None

    def graph_factory():  # runs later, when something reads the graph: with this compile's options
        from convc.passes.pipeline import pipeline
        return pipeline(load_graph(model, batch, input_shape, input_shapes=input_shapes), options=options).graph
    try:
        art = cached_artifact(root, alias, progress)
        hit = None if art is None else model_from_artifact(art, threads=options.threads, graph_factory=graph_factory,
                                                          respecialize=respecialize, override=override,
                                                          signature=signature)
    except Exception as e:  # noqa: BLE001  an unusable entry must never fail a compile that can run cold
        warnings.warn(f"convc compile cache: cannot use the cached code ({type(e).__name__}: {e}); compiling again",
                      CacheWarning, stacklevel=3)
        hit = None
    return hit, alias


def _variants(model: ModelSource, batch: int | None, input_shape: Any, fixed: dict, free: dict,
              options: CompileOptions, onnx_source: bool):
    """(respecialize, override) of a compiled model: the compiles on first use for new input shapes
    (symbolic dimensions ``free``) and for overridden ONNX initializers."""
    def variant(shapes: dict | None, runtime: frozenset[str]) -> CompiledModel:
        if onnx_source:
            graph = load_graph(model, batch, input_shape, runtime, input_shapes={**fixed, **(shapes or {})} or None)
        else:  # a Module: only its batch is free
            graph = load_graph(model, next(iter(shapes.values()))[0] if shapes else batch, input_shape, runtime)
        return compile_graph(graph, options,
                             override=(lambda names: variant(shapes, runtime | names)) if onnx_source else None)
    respecialize = ((lambda shapes: variant(shapes, frozenset()))
                    if (batch is None and is_nn_module(model)) or free else None)
    override = (lambda names: variant(None, names)) if onnx_source else None
    return respecialize, override


def _warm_with_stored_signature(model: ModelSource, data: Any, batch: int | None, input_shape: Any,
                                options: CompileOptions, progress: Progress) -> tuple[CompiledModel | None, str | None]:
    """(the cached model of an ONNX source compiled before with the same options, rebuilt from its
    entry and the input signature stored with it, or None; the source's cache alias, which the
    full path reuses instead of hashing the model again). ``data``: the model file as read
    (convc.model_file.ModelBytes), or None for a source given as bytes or a ModelProto."""
    from convc.codegen.entry import cache_dir, cached_artifact, source_signature
    root = cache_dir(options.cache)
    if root is None:
        return None, None
    alias = source_alias(model if data is None else data, batch, input_shape, None, options)
    if alias is None:
        return None, None
    try:
        art = cached_artifact(root, alias, progress)
        signature = None if art is None else source_signature(art, alias)
        if signature is None:
            return None, alias
        free = {n: dims for n, dims in signature.items() if any(not isinstance(d, int) for d in dims)}
        respecialize, override = _variants(model, batch, input_shape, {}, free, options, True)

        def graph_factory():  # runs later, when something reads the graph: with this compile's options
            from convc.passes.pipeline import pipeline
            return pipeline(load_graph(model, batch, input_shape), options=options).graph
        return model_from_artifact(art, threads=options.threads, graph_factory=graph_factory,
                                   respecialize=respecialize, override=override, signature=signature), alias
    except Exception:  # noqa: BLE001  anything unusable: the full path looks again and says why
        return None, alias


@without_huge_page_advice()
def compile_model(model: ModelSource, options: CompileOptions, *, batch: int | None = None, input_shape: Any = None,
                  input_shapes: Any = None, progress: Progress = None) -> CompiledModel:
    """``convc.compile`` once its options are resolved: the cache's fast path, else import, passes
    and codegen. Symbolic input dimensions that ``batch`` and ``input_shapes`` leave free compile
    on first use for each new input shape (convc/model.py): a free batch compiles for batch 1
    first, a free height or width (no default) compiles nothing until the first run. Variants
    reading overridden ONNX initializers at run time also compile on first use."""
    if progress:
        progress("import")
    if is_nn_module(model):
        model = model.snapshot()  # later edits to the parameters must not reach variants compiled on first use
    onnx_source = not is_graph(model) and not is_nn_module(model)
    if input_shapes is not None and not onnx_source:
        raise InputError("input_shapes= fixes the symbolic dimensions of an ONNX model's inputs; a convc.nn "
                         "Module takes input_shape=, a Graph's shapes are fixed")
    known_alias, data = None, None
    if isinstance(model, (str, os.PathLike)):  # read once: hashed for the cache, then parsed
        from convc.model_file import read_model_bytes
        data = read_model_bytes(Path(model))
    if onnx_source and input_shapes is None:
        # the cache's fastest path: the input signature stored with the entry, so a warm compile
        # neither imports the onnx package (about 1 s) nor parses the model
        hit, known_alias = _warm_with_stored_signature(model, data, batch, input_shape, options, progress)
        if hit is not None:
            return hit
    source = model
    if onnx_source:  # parsed and checked once, for the signature and the import (ResNet-101: 0.3 s of CPU each)
        from convc.frontend.onnx.reader import read_once
        source = read_once(model, data)
    fixed, signature, outputs = input_signature(source, batch, input_shapes) if onnx_source else ({}, None, [])
    free = {n: dims for n, dims in (signature or {}).items() if any(not isinstance(d, int) for d in dims)}
    respecialize, override = _variants(model, batch, input_shape, fixed, free, options, onnx_source)
    if any(not isinstance(d, int) for dims in free.values() for d in dims[1:]):
        # a free height or width has no default to compile first: the first run compiles for its shapes
        name = Path(model).stem if isinstance(model, (str, os.PathLike)) else "model"
        shown = ", ".join(f"{n!r} {list(dims)}" for n, dims in free.items())
        return CompiledModel(None, LazyGraph(name, why_not=f"it compiles on its first run, for the input shapes "
                                                           f"fed (symbolic: {shown})"),
                             threads=options.threads, respecialize=respecialize, signature=signature,
                             outputs=outputs)
    if onnx_source and source.external:  # the bytes hashed do not hold these tensors: no alias names their entry
        hit, alias = None, None
    else:
        hit, alias = warm_model(model, batch, input_shape, options, progress, respecialize, override,
                                input_shapes=fixed or None, signature=signature,
                                alias=None if fixed else known_alias, data=data)
    del data
    if hit is not None:
        return hit
    from convc.codegen.llvm_pool import prestart
    prestart()  # a cold compile: LLVM's worker process starts while the graph is built and optimized
    graph = load_shaped(source, batch, input_shape, fixed)
    del source  # the parsed model and its file's bytes: not kept through the passes and codegen
    return compile_graph(graph, options, progress=progress, respecialize=respecialize, override=override,
                         alias=alias, signature=signature)



# --- ahead-of-time builds --------------------------------------------------------------------------

@without_huge_page_advice()
def build_library(model: ModelSource, output, options: CompileOptions, *, batch: int | None = None,
                  input_shape: Any = None, input_shapes: Any = None, progress: Progress = None, header=None):
    """Compile ``model`` (whatever ``convc.compile`` takes) to a shared library or object file for
    ``options.target``; returns codegen/aot.py's BuildResult."""
    from convc.codegen.aot import build_plan
    from convc.codegen.target import resolve_target
    from convc.passes.pipeline import pipeline
    options = options.with_(target=resolve_target(options.target))  # an unknown target fails before the import
    if isinstance(model, Path):
        model = str(model)
    if progress:
        progress("import")
    plan = pipeline(load_shaped(model, batch, input_shape, input_shapes), progress=progress, options=options)
    if batch is None and not input_shapes and (is_nn_module(model) or has_dynamic_batch(model)):
        # the source's batch is free: convc.load runs any batch in chunks of the compiled one (convc/model.py),
        # splitting every input whose batch is free
        plan.graph.metadata["free_batch"] = True
        plan.graph.metadata["free_batch_inputs"] = list(plan.graph.inputs[:1]) if is_nn_module(model) else \
            dynamic_batch_inputs(model)
    return build_plan(plan, output, options, progress=progress, header=header)


@without_huge_page_advice()
def build_training_library(model: ModelSource, output, options: CompileOptions, *, batch: int | None = None,
                           optimizer: Any = "adam", lr: float | None = None, loss: Any = "cross_entropy",
                           seed: int = 0, progress: Progress = None, header=None, loss_weights: Any = None,
                           loss_attrs: Any = None, soft_targets: Any = False, loss_settings: Any = None):
    """A training library for ``model`` at batch size ``batch`` (codegen/aot_train.py): the model is
    loaded and the training step and eval forward planned here, codegen builds the library. Every
    model input is fed by the caller; ``loss`` is a name, or one per model output (a list) summed
    with ``loss_weights``, as ``convc.Trainer`` trains; ``loss_attrs`` and ``soft_targets`` are the
    losses' options in the same form (passes/autodiff/training.py), ``loss_settings`` what the
    library's metadata records of them (convc.Loss.settings(), one per output)."""
    from convc.codegen.aot_train import LOSSES, build_training_plan
    from convc.optim import by_name
    from convc.codegen.target import resolve_target
    from convc.errors import CompileError
    from convc.passes.autodiff.training import build_split, build_training
    options = options.with_(target=resolve_target(options.target))
    losses = [loss] if isinstance(loss, str) else list(loss)
    unknown = [v for v in losses if v not in LOSSES]
    if unknown or not losses:
        raise CompileError(f"unknown loss {(unknown or losses)!r}; choose one of {', '.join(LOSSES)}")
    if loss_weights is not None and (len(loss_weights) != len(losses) or not all(
            isinstance(w, (int, float)) and float(w) == float(w) and abs(float(w)) != float("inf") for w in loss_weights)):
        raise InputError(f"loss_weights={loss_weights!r}: one finite number per loss ({len(losses)})")
    opt = by_name(optimizer, lr) if isinstance(optimizer, str) else optimizer
    if progress:
        progress("import")
    g0 = load_graph(model, batch)
    forward = load_forward(g0, {n: g0.tensor(n).shape for n in g0.inputs})
    per_output = loss if isinstance(loss, str) else losses  # the step's form: one name, or one per output
    if progress:
        progress("training step: autodiff, loss, optimizer")
    step_options = dict(loss=per_output, optimizer=opt, seed=seed, loss_weights=loss_weights, loss_attrs=loss_attrs,
                        soft_targets=soft_targets)
    step, split = build_training(forward, **step_options), build_split(forward, **step_options)
    return build_training_plan(step, eval_plan(forward, step.roles), opt, output, options, name=forward.name,
                               loss=losses, seed=seed, progress=progress, header=header, split=split,
                               loss_weights=loss_weights, loss_settings=loss_settings)


# --- training --------------------------------------------------------------------------------------

def load_forward(model: Any, input_shape: Any) -> Graph:
    """The inference Graph of ``model`` (ONNX path/bytes/proto, Graph, or convc.nn module) at the
    batch size of ``input_shape``, loaded by ``load_graph`` and checked for training:
    ``input_shape`` is one shape (a model with one input), or one per input, a dict
    ``{name: shape}`` or a list in the model's input order; the inputs share the batch."""
    names = _declared_inputs(model)
    if _is_one_shape(input_shape):
        if names is not None and len(names) != 1:
            raise InputError(f"input_shape={input_shape!r} is one shape, the model has {len(names)} inputs {names}: "
                             "give one shape per input, a dict {name: shape} or a list in that order")
        shape = _shape_of("input_shape", input_shape)
        g = load_graph(model, shape[0], shape)
        have = g.tensor(g.inputs[0]).shape
        if have != shape:
            raise InputError(f"input_shape={shape} does not match the model's input {g.inputs[0]!r} of shape {have}")
        return g
    if names is None:
        raise InputError(f"input_shape={input_shape!r} gives several inputs; a convc.nn module has one: give its shape")
    if isinstance(input_shape, Mapping):
        missing, unknown = [n for n in names if n not in input_shape], [n for n in input_shape if n not in names]
        if missing or unknown:
            raise InputError(f"input_shape: missing inputs {missing}, unexpected {unknown}; the model's inputs are "
                             f"{names}")
        given = [input_shape[n] for n in names]
    else:
        if len(input_shape) != len(names):
            raise InputError(f"input_shape has {len(input_shape)} shapes, the model has {len(names)} inputs {names} "
                             "(one shape per input, in this order)")
        given = list(input_shape)
    shapes = {name: _shape_of(f"input_shape of input {name!r}", shape) for name, shape in zip(names, given)}
    batches = {n: s[0] for n, s in shapes.items()}
    if len(set(batches.values())) != 1:
        raise InputError(f"input_shape: the inputs' batch sizes differ ({batches}); they share one batch")
    g = load_graph(model, shapes[names[0]][0], input_shapes=shapes if is_onnx_source(model) else None)
    for name in names:
        if g.tensor(name).shape != shapes[name]:
            raise InputError(f"input_shape {shapes[name]} does not match the model's input {name!r} of shape "
                             f"{g.tensor(name).shape}")
    return g


def _shape_of(what: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as (batch, ...) of positive ints, at least two of them (2.5 is not silently 2)."""
    try:
        dims = tuple(positive_int(what, d, optional=False) for d in shape)
    except (InputError, TypeError):
        dims = ()
    if len(dims) < 2:
        raise InputError(f"{what}={shape!r} must be (batch, channels, ...) with positive integer sizes")
    return dims


def _is_one_shape(input_shape: Any) -> bool:
    """One shape (ints), not one per input (a dict, or a sequence of sequences)."""
    import numpy as np
    if isinstance(input_shape, Mapping):
        return False
    return not (isinstance(input_shape, (list, tuple)) and input_shape
                and all(isinstance(s, (list, tuple, np.ndarray)) for s in input_shape))


def _declared_inputs(model: ModelSource) -> list[str] | None:
    """The inputs a caller feeds, in order (None for a convc.nn module: it has one)."""
    if is_graph(model):
        return list(model.inputs)
    if is_onnx_source(model):
        from convc.frontend.onnx.reader import read_model
        from convc.frontend.onnx.signature import declared_inputs
        return list(declared_inputs(read_model(str(model) if isinstance(model, Path) else model,
                                               external_data=False)))
    return None


def eval_plan(forward: Graph, roles: Mapping[str, str]):
    """Inference on the training state: parameters and running statistics become inputs read at
    run time (no recompilation when they change); Dropout is the identity; epilogues are fused."""
    from convc.passes.autodiff.training import eval_graph
    from convc.passes.pipeline import EVAL_ON_STATE, pipeline
    return pipeline(eval_graph(forward, dict(roles)), variant=EVAL_ON_STATE)


ONE_THREAD = CompileOptions(threads=1)


def compile_training_graph(graph: Graph, options: CompileOptions = ONE_THREAD) -> CompiledModel:
    """Compile ``graph`` as it is (no inference passes: weights stay wherever the graph keeps them)
    with the kernels that read non-constant weights at run time; returns a ``CompiledModel``. For
    tests of the training kernels and for graphs built by hand (one thread unless ``options`` say otherwise)."""
    from convc.passes.pipeline import AS_BUILT, pipeline
    return compile_plan(pipeline(graph, variant=AS_BUILT), options)
