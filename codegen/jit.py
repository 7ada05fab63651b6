"""JIT-compile a NativeModule for the host CPU with llvmlite's MCJIT."""
from __future__ import annotations

import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import llvmlite.binding as llvm

from convc.codegen import llvm_worker
from convc.codegen.llvm_worker import optimize
from convc.errors import CompileError

_init_lock = threading.Lock()
_initialized = False


def init_llvm() -> None:
    """LLVM initializes itself in llvmlite >= 0.45; only the native target needs registering."""
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()  # without it, inline asm aborts the process
            _initialized = True


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str

    @staticmethod
    def host() -> "Target":
        init_llvm()
        return Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())

    def machine(self, pic: bool = False):
        init_llvm()
        return llvm_worker.target_machine(self.triple, self.cpu, self.features, pic=pic)


def parse(ir_text: str, target: Target, tm) -> llvm.ModuleRef:
    try:
        return llvm_worker.parse(ir_text, target.triple, tm)
    except RuntimeError as e:
        raise CompileError(f"convc generated invalid LLVM IR: {e}") from e


class JitEngine:
    """Owns one MCJIT engine (and its TargetMachine); keep it alive while its functions are used."""

    def __init__(self, ir_text: str, target: Target | None = None):
        self.target = target or Target.host()
        tm = self.target.machine()
        mod = parse(ir_text, self.target, tm)
        optimize(mod, tm)
        # MCJIT takes ownership of its TargetMachine: give it its own
        self.engine = llvm.create_mcjit_compiler(mod, self.target.machine())
        self.engine.finalize_object()
        self.engine.run_static_constructors()
        self.module = mod

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"symbol {name!r} is missing from the compiled module")
        return addr


def machine_code(ir_text: str, target: Target | None = None, *, pic: bool = False, link: str | None = None,
                 modules: tuple[str, ...] = (), speed: int = 2, progress=None) -> bytes:
    """Optimize ``ir_text`` for ``target`` and return a relocatable object file.

    The JIT (``pic=False``: the TargetMachine options MCJIT uses) and the AOT build (``pic=True``,
    default code model, for a shared library) share this. ``modules`` are more IR texts linked in
    before optimization; ``link`` is IR text linked in after it (the AOT wrapper functions, which
    carry their own target attributes)."""
    target = target or Target.host()
    tm = target.machine(pic=pic)
    mod = parse(ir_text, target, tm)
    for text in modules:
        mod.link_in(parse(text, target, tm))
    if progress:
        progress("LLVM optimization")
    with still_running(progress, "LLVM optimization"):
        optimize(mod, tm, speed=speed)
    if link is not None:
        extra = parse(link, target, tm)
        mod.link_in(extra)
    if progress:
        progress("LLVM machine code")
    with still_running(progress, "LLVM machine code"):
        return tm.emit_object(mod)


HEARTBEAT = 2.0  # seconds between progress lines while LLVM runs (here and in codegen/llvm_pool.py)


@contextmanager
def still_running(progress, what: str):
    """A progress line every HEARTBEAT seconds while one long LLVM call runs (the AOT build compiles
    its module in one piece: DenseNet-121's took tens of seconds). llvmlite releases the GIL inside
    LLVM, so a thread can speak meanwhile."""
    if not progress:
        yield
        return
    stop, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            progress(f"{what}: {time.perf_counter() - start:.0f} s so far")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


_OBJECTS = b"CONVCOBJ"  # several object files in one: magic, u32 count, u64 sizes, the files


def pack_objects(objects: list[bytes]) -> bytes:
    """One bytes value holding a model's object files (codegen/split.py makes several)."""
    if len(objects) == 1:
        return bytes(objects[0])
    return b"".join([_OBJECTS, struct.pack("<I", len(objects)), struct.pack(f"<{len(objects)}Q",
                                                                             *map(len, objects)), *objects])


def unpack_objects(data: bytes) -> list[bytes]:
    """The object files of ``pack_objects`` (a lone object file is itself); ValueError if damaged."""
    data = bytes(data)
    if not data.startswith(_OBJECTS):
        return [data]
    start = len(_OBJECTS) + 4
    if len(data) < start:
        raise ValueError("truncated object list")
    (n,) = struct.unpack_from("<I", data, len(_OBJECTS))
    sizes = struct.unpack_from(f"<{n}Q", data, start)
    pos, out = start + 8 * n, []
    for size in sizes:
        out.append(data[pos:pos + size])
        pos += size
    if pos != len(data) or any(len(o) == 0 for o in out):
        raise ValueError("object list sizes do not match its length")
    return out


class ObjectEngine:
    """An MCJIT engine over finished object files (from ``machine_code``, ``compile_modules`` or the
    compile cache; ``pack_objects`` of several): loading takes milliseconds, no LLVM optimization or
    code generation runs. Calls between the objects resolve inside the engine."""

    def __init__(self, obj: bytes, target: Target | None = None):
        self.target = target or Target.host()
        init_llvm()
        empty = llvm.parse_assembly("")
        empty.triple = self.target.triple
        self.engine = llvm.create_mcjit_compiler(empty, self.target.machine())
        self._objects = [llvm.ObjectFileRef.from_data(o) for o in unpack_objects(obj)]
        for o in self._objects:
            self.engine.add_object_file(o)
        self.engine.finalize_object()
        self.engine.run_static_constructors()

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"symbol {name!r} is missing from the compiled module")
        return addr

    def global_address(self, name: str) -> int:
        addr = self.engine.get_global_value_address(name)
        if not addr:
            raise CompileError(f"global {name!r} is missing from the compiled module")
        return addr
