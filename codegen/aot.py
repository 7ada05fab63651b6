"""Ahead-of-time builds: a model as a self-contained shared library (or object file) plus a C header.

    convc compile model.onnx -o model.so [--batch N] [--target native|x86-64-v3|x86-64|aarch64] [--threads N]

The library holds the same LLVM module the JIT compiles (codegen/module.py: the kernels, the entry
point ``convc_run`` and the thread pool), optimized by the same pipeline; only the TargetMachine
differs (position-independent code, default code model, an object file instead of MCJIT). Linked
into it is the wrapper module of the C ABI (codegen/wrapper.py: the weights, ``convc_create`` /
``convc_destroy`` / ``convc_run_model``, metadata queries and the CPU check), LLVM IR as well, so that
no C compiler is needed for the object; ``cc -shared`` only links it against libc, libm and pthreads
(codegen/link.py). Beside it go the C header (codegen/header.py). The targets are in
codegen/target.py, the weights blob and the metadata, which the compile cache stores too, in
codegen/blob.py.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convc.codegen import jit
from convc.codegen import module as codegen_module  # called through the module: a test forbids code generation
from convc.codegen.artifacts import atomic_write
from convc.codegen.blob import blob_layout, metadata, used_constants
from convc.codegen.header import guard_name, header_text
from convc.codegen.link import write_library
from convc.codegen.target import AotTarget, init_backend, resolve_target
from convc.codegen.wrapper import Wrapper, inference_wrapper

from convc.options import CompileOptions
from convc.runtime import IOSpec

# writes a library's C ABI into its wrapper module, given the metadata and the blob offsets of the
# module's constant table
Runtime = Callable[[Wrapper, dict, Sequence[int | None]], None]


# --- building ----------------------------------------------------------------------------------

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
                 speed: int = 3, extra_decls: str = "") -> BuildResult:
    """Write a NativeModule as a shared library (``output`` ending in .so/.dylib) or object file (.o),
    plus its C header (default: the output's name with .h).

    The rest is for training libraries (codegen/aot_train.py): ``constants`` is the whole blob's
    contents (the module's constant table first), ``runtime`` writes the C ABI into the wrapper
    module (default: ``inference_wrapper``), ``modules`` are more IR modules linked in before
    optimization at level ``speed``, ``extra_decls`` more declarations for the header."""
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
        obj = jit.machine_code(str(native.ir_module), target.llvm_target(), pic=True, link=wrapper.text(), modules=modules,
                           speed=speed, progress=progress)
        timings["LLVM"] = time.perf_counter() - t
        atomic_write(header_path, header_text(meta, target, str(out), guard_name(header_path), extra_decls).encode())
        if object_only:
            atomic_write(out, obj)
        else:
            if progress:
                progress("linking " + out.name)
            t = time.perf_counter()
            write_library(obj, out, target, tmp)
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
    return build_native(native, output, tgt, *specs, graph_metadata=g.metadata, progress=progress, header=header)
