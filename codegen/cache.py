"""The JIT's compile cache: optimized graph in, machine code and packed weights out.

A miss generates the code (codegen/module.py, LLVM through codegen/llvm_pool.py) and stores it; a
hit reads the stored entry. Where the cache is, the entry format, reading and loading compiled
code live in ``codegen/entry.py`` and the keys in ``codegen/cache_key.py``, both without the code
generator, so that a pickled model, a loaded library and a warm compile never import it; this
module is the one that compiles.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from convc.codegen import jit
from convc.codegen import module as codegen_module
from convc.codegen.blob import metadata, used_constants
from convc.codegen.cache_key import code_fingerprint, environment, graph_key, source_key  # noqa: F401  (public here)
# re-exported: the cache's users (the CLI, codegen/cache_limit.py, tests) read these from here
from convc.codegen.entry import (FORMAT, HEADER_BYTES, MAGIC, _HEADER, ArtifactError, CacheWarning,  # noqa: F401
                                 CorruptEntry, JitArtifact, _entries, _pad, _safe, add_alias, cache_dir,  # noqa: F401
                                 cached_artifact, engine_for, entry_artifact, entry_bytes, lookup,  # noqa: F401
                                 lookup_source, read_entry, source_signature, store, store_in_background,  # noqa: F401
                                 wait_for_stores, write_entry)  # noqa: F401
from convc.codegen.jit import Target
from convc.codegen.llvm_pool import ModuleCompiler, compile_modules
from convc.codegen.split import Splitter, split_module
from convc.codegen.target import resolve_target

from convc.abi import PARALLEL, POOL_CREATE, POOL_DESTROY
from convc.options import CompileOptions
from convc.runtime import IOSpec

# An entry this large (code and weights) is written after the compile returns, on a thread of its
# own (codegen/entry.py store_in_background): ResNet-101's 340 MB took 0.9 s of CPU to hash and
# write. A smaller one is written before, so a process started right after the compile (a test, a
# worker) finds it; a large model's next process may miss it for that second and compile again.
BACKGROUND_STORE_BYTES = 32 << 20


LIBRARY = (PARALLEL, POOL_CREATE, POOL_DESTROY)


def generate(plan, options: CompileOptions, root, progress: Callable[[str], None] | None):
    """(the NativeModule, its object files): each kernel group split off (codegen/split.py) and
    handed to LLVM's worker processes as soon as its kernel is written, so that LLVM compiles on
    the other cores while Python emits the next layers (codegen/llvm_pool.py ModuleCompiler)."""
    compiler = ModuleCompiler(Target.host(), root, progress=progress, stream=True)
    splitter: list[Splitter] = []

    def kernel_done(module, name: str) -> None:
        if not splitter:
            splitter.append(Splitter(module, LIBRARY))
        for m in splitter[0].add([name]):
            compiler.add(m)
        for m in splitter[0].take_guesses():
            compiler.guess(m)
    try:
        native = codegen_module.emit_module(plan, name=plan.graph.name, instrument=options.instrument,
                                            threads=options.threads, progress=progress, kernel_done=kernel_done)
    except BaseException:
        compiler.cancel()
        raise
    if progress:
        progress(f"module split: {len(native.callees)} kernel calls")
    head, complete = (splitter[0] if splitter else Splitter(native.ir_module, LIBRARY)).finish()
    if not complete or native.changed_after_handover:
        # a kernel shares code with the entry point, or a kernel function changed after it was
        # split off (a later layer sharing it lost noalias): split the finished module instead
        compiler.cancel()
        return native, compile_modules(split_module(native.ir_module, native.callees, LIBRARY), Target.host(), root,
                                       progress=progress)
    groups = len(compiler.modules)
    for m in head:
        compiler.add(m)
    objects = compiler.finish()
    return native, objects[groups:] + objects[:groups]  # the entry module first, as split_module orders them


def compile_plan(plan, options: CompileOptions, *, progress: Callable[[str], None] | None = None,
                 alias: str | None = None, signature: dict | None = None) -> JitArtifact:
    """JIT-compile a planned graph through the cache: a hit reads the stored artifact, a miss
    generates it (and stores it when caching is on). ``alias`` (a source hash) will also name the
    entry, with ``signature`` (the source's declared input dimensions) stored for it."""
    root = cache_dir(options.cache)
    key = None
    if root is not None:
        t = time.perf_counter()
        key = graph_key(plan, environment(options.threads, options.instrument))
        art = lookup(root, key)
        if art is not None:
            if progress:
                progress(f"compile cache hit {key[:12]} ({(time.perf_counter() - t) * 1e3:.0f} ms)")
            if alias:
                _safe(lambda: add_alias(root, key, art, alias, signature))
            return art
        if progress:
            progress("compile cache miss: generating code")
    if progress:
        progress("code generation")
    native, objects = generate(plan, options, root, progress)
    g = plan.graph
    specs = [[IOSpec(n, g.tensor(n).shape, g.tensor(n).dtype) for n in names]
             for names in (native.input_names, native.output_names)]
    obj = jit.pack_objects(objects)
    meta = metadata(native, resolve_target("native"), *specs, g.metadata, {"instrumented": bool(options.instrument)})
    art = JitArtifact(meta, obj, used_constants(native), native.arena_steps)
    if root is not None:
        if progress:
            progress(f"compile cache: storing {key[:12]}")

        def write() -> None:
            _safe(lambda: store(root, key, meta, obj, art.constants, (alias,) if alias else (),
                                {alias: signature} if alias and signature is not None else None))
            from convc.codegen.cache_limit import prune  # the limit's module reads this one's entries
            _safe(lambda: prune(root))
        size = len(obj) + sum(c.nbytes for c in art.constants if c is not None)
        if size >= BACKGROUND_STORE_BYTES:
            store_in_background((key, alias) if alias else (key,), write)
        else:
            write()
    return art

