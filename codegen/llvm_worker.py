"""LLVM IR text in, object file out: the one routine every compile runs, and a worker process for it.

llvmlite serializes every call into LLVM behind one lock, so threads cannot compile modules side
by side; processes can. ``codegen/llvm_pool.py`` starts this file as a script
(``python -I llvm_worker.py``): it imports llvmlite and nothing of convc (about 0.1 s to start,
against about 1 s for convc with numpy and networkx), then answers requests on stdin with object
files on stdout, framed as an 8-byte little-endian length and a pickle. The parent process runs
the same ``object_code`` for its own share of the modules.
"""
from __future__ import annotations

import pickle
import struct
import sys

import llvmlite.binding as llvm

_FRAME = struct.Struct("<Q")


def target_machine(triple: str, cpu: str, features: str, *, pic: bool = False, opt: int = 3):
    """The TargetMachine of the JIT (``pic=False``: MCJIT's large code model, so calls between
    separately loaded objects reach anywhere) or of a shared library (``pic=True``)."""
    target = llvm.Target.from_triple(triple)
    if pic:
        return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic", codemodel="default")
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="default",
                                        codemodel="jitdefault")


def optimize(module, tm, speed: int = 2) -> None:
    """LLVM's IR pipeline at -O2: the GEMM micro-kernels are explicit vector code already, and on
    a 400-layer model -O3 took 30% longer to compile for no measurable speed (DenseNet-121:
    21 s against 16.6 s, 85 ms against 81 ms a run)."""
    pto = llvm.create_pipeline_tuning_options(speed_level=speed)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)


def parse(text: str, triple: str, tm, context=None):
    """Parse and verify IR text (RuntimeError with LLVM's message when it is invalid)."""
    mod = llvm.parse_assembly(text, context) if context is not None else llvm.parse_assembly(text)
    mod.triple = triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    return mod


def object_code(text: str, triple: str, cpu: str, features: str, speed: int = 2, pic: bool = False) -> bytes:
    """Optimize one module and emit its relocatable object file (JIT code, or with ``pic`` a shared
    library's), in a context of its own (freed with the module, and not shared with another
    thread's compile)."""
    tm = target_machine(triple, cpu, features, pic=pic)
    context = llvm.create_context()
    mod = parse(text, triple, tm, context)
    optimize(mod, tm, speed)
    return tm.emit_object(mod)


def _read(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _warm_up() -> None:
    """Compile an empty function for this machine once: LLVM sets up its target and pass pipelines
    on the first compile (about 0.04 s), which then happens while the worker waits for work, not
    on the first kernel (a cold compile starts its worker before it writes any, llvm_pool.prestart)."""
    try:
        object_code('define void @"convc_warm_up"() {\nentry:\n  ret void\n}\n', llvm.get_process_triple(),
                    llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())
    except Exception:  # noqa: BLE001  only a head start: the requests say what fails, if anything
        pass


def serve(inp, out) -> None:
    """Answer ``(text, triple, cpu, features, speed, pic)`` requests with ``("ok", object)`` or
    ``("error", message)`` until stdin closes."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    host_arch = llvm.get_process_triple().split("-")[0]
    _warm_up()
    while True:
        try:
            (n,) = _FRAME.unpack(_read(inp, _FRAME.size))
            request = pickle.loads(_read(inp, n))
        except EOFError:
            return
        if request[1].split("-")[0] != host_arch:  # a cross build (convc compile --target aarch64)
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
        try:
            reply = ("ok", object_code(*request))
        except Exception as e:  # noqa: BLE001  sent back: the parent raises it as a CompileError
            reply = ("error", f"{type(e).__name__}: {e}")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_FRAME.pack(len(data)) + data)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
