"""Ahead-of-time builds: a model as a self-contained shared library (or object file) plus a C header.

    convc compile model.onnx -o model.so [--batch N] [--target native|x86-64-v3|x86-64|aarch64] [--threads N]

The library holds the same code the JIT compiles (codegen/module.py: the kernels, the entry point
``convc_run`` and the thread pool), split as the JIT splits it (codegen/split.py: one module per
kernel group, each identical kernel once) and compiled the same way: on every core, through the
kernel-level cache shared with every model built before (codegen/llvm_pool.py). Only the
TargetMachine differs (position-independent code, default code model), so the library's kernel
objects are cached apart from the JIT's. Beside them goes the wrapper module of the C ABI
(codegen/wrapper.py: the weights, ``convc_create`` / ``convc_destroy`` / ``convc_run_model``,
metadata queries and the CPU check), LLVM IR as well; ``cc -shared`` links the objects against libc,
libm and pthreads (codegen/link.py), the kernels' content names kept inside the library. An object
output (``-o model.o``) is the objects relinked into one (``cc -r``, the content names made local
by objcopy); without a C compiler or objcopy it is the model compiled as one module on one core,
as before the split. Beside it go the C header (codegen/header.py). The targets are in
codegen/target.py, the weights blob and the metadata, which the compile cache stores too, in
codegen/blob.py.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from convc.codegen import jit
from convc.codegen import module as codegen_module  # called through the module: a test forbids code generation
from convc.codegen.artifacts import atomic_write
from convc.codegen.cache import cache_dir
from convc.codegen.blob import blob_layout, metadata, used_constants
from convc.codegen.header import guard_name, header_text
from convc.codegen.link import find_cc, find_objcopy, relink_object, write_library
from convc.codegen.llvm_pool import compile_modules
from convc.codegen.split import CONTENT_NAME_GLOBS, ENTRY_SPEED, SplitModule, split_module
from convc.codegen.target import AotTarget, init_backend, resolve_target
from convc.codegen.wrapper import Wrapper, inference_wrapper

from convc.abi import PARALLEL, POOL_CREATE, POOL_DESTROY
from convc.options import CompileOptions
from convc.runtime import IOSpec

# writes a library's C ABI into its wrapper module, given the metadata and the blob offsets of the
# module's constant table
Runtime = Callable[[Wrapper, dict, Sequence[int | None]], None]


# --- building ----------------------------------------------------------------------------------

def split_native(native, rename: Callable[[str], str] | None = None) -> list[SplitModule]:
    """A NativeModule's code as the JIT splits it; ``rename`` rewrites each module's text (a
    training library's second entry point), and a renamed module gets the key of its new text."""
    parts = split_module(native.ir_module, native.callees, (PARALLEL, POOL_CREATE, POOL_DESTROY))
    if rename is None:
        return parts
    out = []
    for m in parts:
        text = rename(m.text)
        if text != m.text:
            m = replace(m, text=text, key=None if m.key is None else hashlib.sha256(text.encode()).hexdigest())
        out.append(m)
    return out


def links_parts(target: AotTarget, object_only: bool) -> bool:
    """Whether the build can link several object files: a C compiler, and objcopy for a .o."""
    return find_cc(target) is not None and (not object_only or find_objcopy(target) is not None)


@dataclass
class BuildResult:
    output: Path                     # the .so (or .o)
    header: Path
    target: AotTarget
    meta: dict
    seconds: float
    object_only: bool
    weights_bytes: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.output.stat().st_size


def build_native(native, output: str | os.PathLike, target: AotTarget, inputs, outputs,
                 graph_metadata: dict | None = None, progress: Callable[[str], None] | None = None,
                 extra_meta: dict | None = None, header: str | os.PathLike | None = None, *,
                 constants: list | None = None, runtime: Runtime | None = None, modules: tuple[str, ...] = (),
                 speed: int = 3, extra_decls: str = "", parts: list[SplitModule] | None = None,
                 cache_root: Path | None = None) -> BuildResult:
    """Write a NativeModule as a shared library (``output`` ending in .so/.dylib) or object file (.o),
    plus its C header (default: the output's name with .h). Its code is ``parts`` (default: the
    module split as the JIT splits it), compiled in parallel through the kernel cache at
    ``cache_root`` (None: no cache); when the parts cannot be linked (see ``links_parts``), the
    module and ``modules`` compiled as one.

    The rest is for training libraries (codegen/aot_train.py): ``constants`` is the whole blob's
    contents (the module's constant table first), ``runtime`` writes the C ABI into the wrapper
    module (default: ``inference_wrapper``), ``modules`` are more IR modules linked in before
    optimization at level ``speed`` in the one-module build, ``extra_decls`` more declarations for
    the header."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(output)
    object_only = out.suffix == ".o"
    header_path = Path(header) if header else out.with_suffix(".h")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(native, target, inputs, outputs, graph_metadata, extra_meta)
    consts = used_constants(native) if constants is None else constants
    offsets, size = blob_layout(consts)
    with tempfile.TemporaryDirectory(prefix="convc-aot-") as tmp:
        t = time.perf_counter()
        wrapper = Wrapper(target)
        wrapper.embed_weights(consts, offsets, size, tmp)
        (runtime or inference_wrapper)(wrapper, meta, offsets[:len(native.constants)])
        timings["wrapper IR"] = time.perf_counter() - t
        t = time.perf_counter()
        init_backend(target)
        split = links_parts(target, object_only)
        if split:
            code = parts if parts is not None else split_native(native)
            # the wrapper is not cached: it holds the weights (or their file's path)
            wrap = SplitModule(wrapper.text(), None, speed=ENTRY_SPEED)
            if progress:  # the stages of the one-module build, now done module by module
                progress("LLVM optimization + LLVM machine code, per module")
            obj: bytes | list[bytes] = compile_modules([*code, wrap], target.llvm_target(), cache_root,
                                                      progress=progress, pic=True)
        else:
            if progress and object_only:
                progress(f"no C compiler and objcopy for {target.arch} to link several objects into {out.name}: "
                         "compiling one module")
            obj = jit.machine_code(str(native.ir_module), target.llvm_target(), pic=True, link=wrapper.text(),
                                   modules=modules, speed=speed, progress=progress)
        timings["LLVM"] = time.perf_counter() - t
        atomic_write(header_path, header_text(meta, target, str(out), guard_name(header_path), extra_decls).encode())
        if progress and (split or not object_only):
            progress("linking " + out.name)
        t = time.perf_counter()
        if object_only and split:
            paths = []
            for k, data in enumerate(obj):
                paths.append(os.path.join(tmp, f"part{k}.o"))
                Path(paths[-1]).write_bytes(data)
            relink_object(paths, out, target, CONTENT_NAME_GLOBS)
        elif object_only:
            atomic_write(out, obj)
        else:
            write_library(obj, out, target, tmp, CONTENT_NAME_GLOBS if split else ())
        timings["link"] = time.perf_counter() - t
    return BuildResult(out, header_path, target, meta, time.perf_counter() - t0, object_only, size, timings)


def build_plan(plan, output: str | os.PathLike, options: CompileOptions, *,
               progress: Callable[[str], None] | None = None,
               header: str | os.PathLike | None = None) -> BuildResult:
    """Compile a planned graph to a shared library or object file for ``options.target`` (an
    AotTarget, resolved by the driver) and ``options.threads`` worker threads."""
    tgt = resolve_target(options.target)
    if progress:
        progress("code generation")
    g = plan.graph
    native = codegen_module.emit_module(plan, name=g.name, threads=options.threads, target=tgt.llvm_target(), progress=progress)
    specs = [[IOSpec(n, g.tensor(n).shape, g.tensor(n).dtype) for n in names]
             for names in (native.input_names, native.output_names)]
    return build_native(native, output, tgt, *specs, graph_metadata=g.metadata, progress=progress, header=header,
                        cache_root=kernel_cache_root(options))


def kernel_cache_root(options: CompileOptions) -> Path | None:
    """The compile cache's directory, whose kernel objects a library build shares (None: caching off)."""
    return cache_dir(options.cache)
