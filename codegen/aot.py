"""Ahead-of-time builds: a model as a self-contained shared library (or object file) plus a C header.

    convc compile model.onnx -o model.so [--batch N] [--target native|x86-64-v3|x86-64|aarch64] [--threads N]

The library holds the same LLVM module the JIT compiles (codegen/module.py: the kernels, the entry
point ``convc_run`` and the thread pool), optimized by the same pipeline; only the TargetMachine
differs (position-independent code, default code model, an object file instead of MCJIT). Linked
into it are the wrapper functions of the C ABI (``wrapper_ir``: ``convc_create`` / ``convc_destroy``
/ ``convc_run_model``, metadata queries and the CPU check), written directly in LLVM IR so that no C
compiler is needed for the object; ``cc -shared`` only links it against libc, libm and pthreads.

Weights. Every constant the code reads (graph constants and weights packed at compile time) sits in
one 64-byte aligned blob, each at a 64-byte aligned offset, and ``convc_constant_table`` points into
it. Writing 100 MB of weights as an LLVM IR constant is slow (an ``ir.Constant`` formats every byte
in Python; hand-escaped ``c"..."`` text still costs ~7 s and 400 MB of memory per 100 MB, measured),
so when the integrated assembler of the target is available (a target of the host architecture) the
module carries ``module asm`` with ``.incbin`` of the blob file, and LLVM's assembler copies the file
into the object in a fraction of a second. Cross targets (aarch64 from x86-64) get the escaped
``c"..."`` constant instead: llvmlite registers only the host's assembly parser, and inline assembly
for any other target would abort the process.

CPU features. A library records the LLVM features it was compiled for. The metadata functions and
``convc_check_cpu`` carry baseline target attributes (``x86-64``/``generic``), so a loader can call
them on any CPU of the architecture; on x86 the check reads CPUID and XCR0 (the OS must save the
AVX / AVX-512 / AMX registers), so a library needing e.g. ``avx512fp16`` fails cleanly on a CPU
without it, where running a kernel would raise SIGILL. ``convc_create`` refuses (returns NULL) on a
CPU that fails the check.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from convc import abi
from convc.codegen.artifacts import atomic_write, c_escape, c_identifier, c_string, sign_library
from convc.errors import CompileError

ALIGN = 64

# --- targets -----------------------------------------------------------------------------------

_X86_V1 = ("64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2", "x87")
_X86_V2 = _X86_V1 + ("cx16", "crc32", "popcnt", "sahf", "sse3", "sse4.1", "sse4.2", "ssse3")
_X86_V3 = _X86_V2 + ("avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
_X86_V4 = _X86_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
X86_LEVELS = {"x86-64": _X86_V1, "x86-64-v2": _X86_V2, "x86-64-v3": _X86_V3, "x86-64-v4": _X86_V4}
TARGET_NAMES = ("native", *X86_LEVELS, "aarch64")


@dataclass(frozen=True)
class AotTarget:
    """What an artifact is built for: the LLVM target and the CPU features a machine must have."""
    name: str
    triple: str
    cpu: str
    features: str                 # the LLVM feature string ("+avx2,+fma,-avx512f,...")
    required: tuple[str, ...]     # the features (without "+") the loader checks

    def llvm_target(self):
        from convc.codegen.jit import Target
        return Target(self.triple, self.cpu, self.features)

    @property
    def arch(self) -> str:
        return self.triple.split("-")[0]

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64")


def _host_os_suffix() -> str:
    from convc.codegen.jit import Target
    parts = Target.host().triple.split("-")
    return "-".join(parts[1:]) if len(parts) > 1 else "unknown-linux-gnu"


def resolve_target(spec: str | AotTarget | None = "native") -> AotTarget:
    """``native`` (this CPU, every feature it has), ``x86-64``/``-v2``/``-v3``/``-v4`` (the psABI
    levels), ``aarch64`` (ARMv8-A with NEON), optionally followed by extra required features:
    ``x86-64-v3,+avx512f``."""
    if isinstance(spec, AotTarget):
        return spec
    from convc.codegen.jit import Target
    name, *extra = [s.strip() for s in (spec or "native").split(",") if s.strip()]
    bad = [e for e in extra if not re.fullmatch(r"\+[A-Za-z0-9._-]+", e)]
    if bad:
        raise CompileError(f"target {spec!r}: extra features are written +name (e.g. x86-64-v3,+avx512f), got {bad}")
    plus = tuple(e[1:] for e in extra)
    if name == "native":
        host = Target.host()
        required = tuple(f[1:] for f in host.features.split(",") if f.startswith("+"))
        features = ",".join(x for x in [host.features, *extra] if x)
        return AotTarget(",".join(["native", *extra]), host.triple, host.cpu, features,
                         tuple(dict.fromkeys(required + plus)))
    if name in X86_LEVELS:
        host_triple = Target.host().triple
        triple = host_triple if host_triple.startswith("x86_64") else "x86_64-" + _host_os_suffix()
        req = X86_LEVELS[name] + plus
        return AotTarget(",".join([name, *extra]), triple, name, ",".join("+" + f for f in req),
                         tuple(dict.fromkeys(req)))
    if name in ("aarch64", "arm64"):
        req = ("neon",) + plus
        return AotTarget(",".join(["aarch64", *extra]), "aarch64-unknown-linux-gnu", "generic", ",".join("+" + f for f in req),
                         tuple(dict.fromkeys(req)))
    raise CompileError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)} "
                       "(optionally followed by extra features: x86-64-v3,+avx512f)")


# --- the CPU check -----------------------------------------------------------------------------
# LLVM x86 feature -> (CPUID leaf, subleaf, register 0..3 = eax..edx, bit, XCR0 bits the OS must enable)
_AVX, _AVX512, _AMX = 0x6, 0xE6, 0x60000
X86_CPUID: dict[str, tuple[int, int, int, int, int]] = {}


def _bits(leaf: int, sub: int, reg: int, names: dict[str, int], xcr0: dict[str, int] | None = None) -> None:
    for name, bit in names.items():
        X86_CPUID[name] = (leaf, sub, reg, bit, (xcr0 or {}).get(name, 0))


_bits(1, 0, 2, {"sse3": 0, "pclmul": 1, "ssse3": 9, "fma": 12, "cx16": 13, "sse4.1": 19, "sse4.2": 20,
                "crc32": 20, "movbe": 22, "popcnt": 23, "aes": 25, "xsave": 26, "avx": 28, "f16c": 29, "rdrnd": 30},
      {"fma": _AVX, "avx": _AVX, "f16c": _AVX})
_bits(1, 0, 3, {"x87": 0, "cx8": 8, "cmov": 15, "mmx": 23, "fxsr": 24, "sse": 25, "sse2": 26})
_L7B = {"fsgsbase": 0, "sgx": 2, "bmi": 3, "hle": 4, "avx2": 5, "bmi2": 8, "invpcid": 10, "rtm": 11,
        "avx512f": 16, "avx512dq": 17, "rdseed": 18, "adx": 19, "avx512ifma": 21, "clflushopt": 23, "clwb": 24,
        "avx512pf": 26, "avx512er": 27, "avx512cd": 28, "sha": 29, "avx512bw": 30, "avx512vl": 31}
_bits(7, 0, 1, _L7B, {k: (_AVX if k == "avx2" else _AVX512) for k in _L7B if k.startswith("avx")})
_L7C = {"prefetchwt1": 0, "avx512vbmi": 1, "pku": 4, "waitpkg": 5, "avx512vbmi2": 6, "shstk": 7, "gfni": 8,
        "vaes": 9, "vpclmulqdq": 10, "avx512vnni": 11, "avx512bitalg": 12, "avx512vpopcntdq": 14, "rdpid": 22,
        "kl": 23, "cldemote": 25, "movdiri": 27, "movdir64b": 28, "enqcmd": 29}
_bits(7, 0, 2, _L7C, {**{k: _AVX512 for k in _L7C if k.startswith("avx512")}, "vaes": _AVX, "vpclmulqdq": _AVX})
_L7D = {"uintr": 5, "avx512vp2intersect": 8, "serialize": 14, "tsxldtrk": 16, "pconfig": 18, "ibt": 20,
        "amx-bf16": 22, "avx512fp16": 23, "amx-tile": 24, "amx-int8": 25}
_bits(7, 0, 3, _L7D, {"avx512vp2intersect": _AVX512, "avx512fp16": _AVX512, "amx-bf16": _AMX, "amx-tile": _AMX,
                      "amx-int8": _AMX})
_bits(7, 1, 0, {"sha512": 0, "sm3": 1, "sm4": 2, "raoint": 3, "avxvnni": 4, "avx512bf16": 5, "cmpccxadd": 7,
                "amx-fp16": 21, "hreset": 22, "avxifma": 23},
      {"sha512": _AVX, "sm3": _AVX, "sm4": _AVX, "avxvnni": _AVX, "avx512bf16": _AVX512, "amx-fp16": _AMX,
       "avxifma": _AVX})
_bits(7, 1, 3, {"avxvnniint8": 4, "avxneconvert": 5, "amx-complex": 8, "avxvnniint16": 10, "prefetchi": 14},
      {"avxvnniint8": _AVX, "avxneconvert": _AVX, "amx-complex": _AMX, "avxvnniint16": _AVX})
_bits(0x80000001, 0, 2, {"sahf": 0, "lzcnt": 5, "sse4a": 6, "prfchw": 8, "xop": 11, "lwp": 15, "fma4": 16,
                         "tbm": 21, "mwaitx": 29}, {"xop": _AVX, "fma4": _AVX})
_bits(0x80000001, 0, 3, {"64bit": 29})
_bits(0x80000008, 0, 1, {"clzero": 0, "rdpru": 4, "wbnoinvd": 9})
_bits(0xD, 1, 0, {"xsaveopt": 0, "xsavec": 1, "xsaves": 3})


AARCH64_BASELINE = {"neon", "fp-armv8"}  # every ARMv8-A CPU has them


def checkable(target: AotTarget) -> tuple[list[str], list[str]]:
    """(features the library's CPU check verifies, features it cannot verify and assumes present)."""
    known = set(X86_CPUID) if target.is_x86 else AARCH64_BASELINE if target.arch == "aarch64" else set()
    return [f for f in target.required if f in known], [f for f in target.required if f not in known]


# --- LLVM IR text helpers ----------------------------------------------------------------------

def _cstr(text: str | bytes) -> tuple[str, int]:
    """An LLVM c"..." literal (NUL-terminated) and its length in bytes."""
    data = (text.encode() if isinstance(text, str) else bytes(text)) + b"\0"
    out = "".join(chr(c) if 32 <= c < 127 and c not in (34, 92) else f"\\{c:02X}" for c in data)
    return f'c"{out}"', len(data)


def _escaped_bytes(data: np.ndarray) -> str:
    """Every byte as \\XX, vectorized (the fallback for embedding weights without an assembler)."""
    digits = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
    raw = np.asarray(data, dtype=np.uint8).reshape(-1)
    out = np.empty((raw.size, 3), dtype=np.uint8)
    out[:, 0] = ord("\\")
    out[:, 1] = digits[raw >> 4]
    out[:, 2] = digits[raw & 15]
    return out.tobytes().decode("ascii")


class _IrText:
    """Accumulates global definitions of a hand-written LLVM module."""

    def __init__(self, prefix: str = "convc") -> None:
        self.lines: list[str] = []
        self._n = 0
        self.prefix = prefix

    def string(self, text: str | bytes) -> str:
        lit, n = _cstr(text)
        self._n += 1
        name = f"@.{self.prefix}.str.{self._n}"
        self.lines.append(f"{name} = private unnamed_addr constant [{n} x i8] {lit}, align 1")
        return name

    def array(self, elem: str, values: Sequence[str], align: int = 8) -> str:
        self._n += 1
        name = f"@.{self.prefix}.arr.{self._n}"
        body = "[" + ", ".join(f"{elem} {v}" for v in values) + "]" if values else "zeroinitializer"
        self.lines.append(f"{name} = private unnamed_addr constant [{len(values)} x {elem}] {body}, align {align}")
        return name

    def getter(self, fn: str, ret: str, value: str, attrs: str = "#0") -> None:
        self.lines.append(f"define {ret} @{fn}() {attrs} {{\n  ret {ret} {value}\n}}")

    def indexed(self, fn: str, ret: str, table: str, n: int, default: str, attrs: str = "#0") -> None:
        """ret fn(int i): table[i] for 0 <= i < n, else ``default``."""
        self.lines.append(f"""define {ret} @{fn}(i32 %i) {attrs} {{
entry:
  %ok = icmp ult i32 %i, {n}
  br i1 %ok, label %in, label %out
in:
  %k = zext i32 %i to i64
  %p = getelementptr inbounds [{n} x {ret}], ptr {table}, i64 0, i64 %k
  %v = load {ret}, ptr %p
  ret {ret} %v
out:
  ret {ret} {default}
}}""")


_X86_CHECK = """
define internal { i32, i32, i32, i32 } @convc_cpuid(i32 %leaf, i32 %sub) #0 {
  %r = call { i32, i32, i32, i32 } asm sideeffect "cpuid", "={ax},={bx},={cx},={dx},{ax},{cx},~{dirflag},~{fpsr},~{flags}"(i32 %leaf, i32 %sub)
  ret { i32, i32, i32, i32 } %r
}

define internal i32 @convc_cpuid_reg(i32 %leaf, i32 %sub, i32 %reg) #0 {
entry:
  %ext = icmp uge i32 %leaf, 2147483648
  %base = select i1 %ext, i32 2147483648, i32 0
  %m = call { i32, i32, i32, i32 } @convc_cpuid(i32 %base, i32 0)
  %max = extractvalue { i32, i32, i32, i32 } %m, 0
  %have = icmp ule i32 %leaf, %max
  br i1 %have, label %read, label %none
read:
  %r = call { i32, i32, i32, i32 } @convc_cpuid(i32 %leaf, i32 %sub)
  %a = extractvalue { i32, i32, i32, i32 } %r, 0
  %b = extractvalue { i32, i32, i32, i32 } %r, 1
  %c = extractvalue { i32, i32, i32, i32 } %r, 2
  %d = extractvalue { i32, i32, i32, i32 } %r, 3
  %is0 = icmp eq i32 %reg, 0
  %is1 = icmp eq i32 %reg, 1
  %is2 = icmp eq i32 %reg, 2
  %v23 = select i1 %is2, i32 %c, i32 %d
  %v123 = select i1 %is1, i32 %b, i32 %v23
  %v = select i1 %is0, i32 %a, i32 %v123
  ret i32 %v
none:
  ret i32 0
}

define internal i64 @convc_xcr0() #0 {
entry:
  %ecx = call i32 @convc_cpuid_reg(i32 1, i32 0, i32 2)
  %osxsave = and i32 %ecx, 134217728
  %has = icmp ne i32 %osxsave, 0
  br i1 %has, label %read, label %none
read:
  %r = call { i32, i32 } asm sideeffect "xgetbv", "={ax},={dx},{cx},~{dirflag},~{fpsr},~{flags}"(i32 0)
  %lo = extractvalue { i32, i32 } %r, 0
  %hi = extractvalue { i32, i32 } %r, 1
  %lo64 = zext i32 %lo to i64
  %hi64 = zext i32 %hi to i64
  %hish = shl i64 %hi64, 32
  %x = or i64 %hish, %lo64
  ret i64 %x
none:
  ret i64 0
}

define i32 @convc_cpu_feature_ok(i32 %i) #0 {
entry:
  %inrange = icmp ult i32 %i, NFEAT
  br i1 %inrange, label %look, label %no
look:
  %k = zext i32 %i to i64
  %pc = getelementptr inbounds [NFEAT x i8], ptr @.convc.feat.checked, i64 0, i64 %k
  %checked = load i8, ptr %pc
  %unchecked = icmp eq i8 %checked, 0
  br i1 %unchecked, label %yes, label %cpuid
cpuid:
  %pl = getelementptr inbounds [NFEAT x i32], ptr @.convc.feat.leaf, i64 0, i64 %k
  %leaf = load i32, ptr %pl
  %ps = getelementptr inbounds [NFEAT x i32], ptr @.convc.feat.sub, i64 0, i64 %k
  %sub = load i32, ptr %ps
  %pr = getelementptr inbounds [NFEAT x i32], ptr @.convc.feat.reg, i64 0, i64 %k
  %reg = load i32, ptr %pr
  %pb = getelementptr inbounds [NFEAT x i32], ptr @.convc.feat.bit, i64 0, i64 %k
  %bit = load i32, ptr %pb
  %v = call i32 @convc_cpuid_reg(i32 %leaf, i32 %sub, i32 %reg)
  %sh = lshr i32 %v, %bit
  %one = and i32 %sh, 1
  %has = icmp ne i32 %one, 0
  br i1 %has, label %os, label %no
os:
  %pm = getelementptr inbounds [NFEAT x i64], ptr @.convc.feat.xcr0, i64 0, i64 %k
  %mask = load i64, ptr %pm
  %nomask = icmp eq i64 %mask, 0
  br i1 %nomask, label %yes, label %xgetbv
xgetbv:
  %x = call i64 @convc_xcr0()
  %xm = and i64 %x, %mask
  %enabled = icmp eq i64 %xm, %mask
  br i1 %enabled, label %yes, label %no
yes:
  ret i32 1
no:
  ret i32 0
}
"""

_OTHER_CHECK = """
define i32 @convc_cpu_feature_ok(i32 %i) #0 {
  %inrange = icmp ult i32 %i, NFEAT
  %r = zext i1 %inrange to i32
  ret i32 %r
}
"""

_COMMON = """
define i32 @convc_check_cpu() #0 {
entry:
  br label %loop
loop:
  %i = phi i32 [ 0, %entry ], [ %next, %body ]
  %missing = phi i32 [ 0, %entry ], [ %m2, %body ]
  %more = icmp slt i32 %i, NFEAT
  br i1 %more, label %body, label %done
body:
  %ok = call i32 @convc_cpu_feature_ok(i32 %i)
  %bad = xor i32 %ok, 1
  %m2 = add i32 %missing, %bad
  %next = add i32 %i, 1
  br label %loop
done:
  ret i32 %missing
}
"""

_DECLS = """
declare ptr @calloc(i64, i64)
declare void @free(ptr)
declare i32 @posix_memalign(ptr, i64, i64)
declare ptr @convc_pool_create(i64)
declare void @convc_pool_destroy(ptr)
declare void @convc_run(ptr, ptr, ptr)
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)

define void @convc_destroy(ptr %ctx) #0 {
entry:
  %null = icmp eq ptr %ctx, null
  br i1 %null, label %done, label %go
go:
  %c3 = getelementptr inbounds ptr, ptr %ctx, i64 3
  %p = load ptr, ptr %c3
  %haspool = icmp ne ptr %p, null
  br i1 %haspool, label %stop, label %mem
stop:
  call void @convc_pool_destroy(ptr %p)
  br label %mem
mem:
  %a = load ptr, ptr %ctx
  call void @free(ptr %a)
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %state = load ptr, ptr %c4
  call void @free(ptr %state)
  call void @free(ptr %ctx)
  br label %done
done:
  ret void
}
"""

# the inference runtime: ctx = {arena, constant table, timestamps (NULL), pool, training state (NULL)}
_RUNTIME = """
define ptr @convc_create(i32 %n) #0 {
entry:
  %missing = call i32 @convc_check_cpu()
  %cpu_ok = icmp eq i32 %missing, 0
  br i1 %cpu_ok, label %alloc, label %fail
alloc:
  %ctx = call ptr @calloc(i64 5, i64 8)
  %got = icmp ne ptr %ctx, null
  br i1 %got, label %arena, label %fail
arena:
  %slot = alloca ptr
  %rc = call i32 @posix_memalign(ptr %slot, i64 64, i64 ARENA)
  %arena_ok = icmp eq i32 %rc, 0
  br i1 %arena_ok, label %fill, label %free_ctx
free_ctx:
  call void @free(ptr %ctx)
  br label %fail
fill:
  %a = load ptr, ptr %slot
  store ptr %a, ptr %ctx
  %c1 = getelementptr inbounds ptr, ptr %ctx, i64 1
  store ptr CONSTTABLE, ptr %c1
  %auto = icmp sle i32 %n, 0
  %over = icmp sgt i32 %n, MAXTHREADS
  %t0 = select i1 %over, i32 MAXTHREADS, i32 %n
  %t = select i1 %auto, i32 MAXTHREADS, i32 %t0
  %par = icmp sgt i32 %t, 1
  br i1 %par, label %pool, label %done
pool:
  %t64 = sext i32 %t to i64
  %p = call ptr @convc_pool_create(i64 %t64)
  %c3 = getelementptr inbounds ptr, ptr %ctx, i64 3
  store ptr %p, ptr %c3
  br label %done
done:
  ret ptr %ctx
fail:
  ret ptr null
}

define i32 @convc_run_model(ptr %ctx, ptr %inputs, ptr %outputs) #0 {
entry:
  %bad0 = icmp eq ptr %ctx, null
  %bad1 = icmp eq ptr %inputs, null
  %bad2 = icmp eq ptr %outputs, null
  %b01 = or i1 %bad0, %bad1
  %bad = or i1 %b01, %bad2
  br i1 %bad, label %fail, label %run
run:
  call void @convc_run(ptr %ctx, ptr %inputs, ptr %outputs)
  ret i32 0
fail:
  ret i32 1
}
"""


# --- the weights blob --------------------------------------------------------------------------

def align_up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def blob_layout(constants: Sequence[np.ndarray | None]) -> tuple[list[int | None], int]:
    """64-byte aligned offset of every constant in one blob (None for a slot nothing reads), and its size."""
    offsets: list[int | None] = []
    size = 0
    for c in constants:
        if c is None:
            offsets.append(None)
            continue
        offsets.append(size)
        size = align_up(size + c.nbytes)
    return offsets, size


def write_blob(f, constants: Sequence[np.ndarray | None], offsets: Sequence[int | None], size: int) -> None:
    """Write the blob to the binary file ``f`` at its current position (zero padding between constants)."""
    pos = 0
    for c, off in zip(constants, offsets):
        if c is None:
            continue
        if off > pos:
            f.write(b"\0" * (off - pos))
        f.write(memoryview(np.ascontiguousarray(c)).cast("B"))
        pos = off + c.nbytes
    if size > pos:
        f.write(b"\0" * (size - pos))


def used_constants(native) -> list[np.ndarray | None]:
    """The module's constant table with the slots its code never reads dropped (None): inference
    kernels read the weights they packed at compile time, not the graph's originals."""
    used = native.used_constants
    return [np.ascontiguousarray(c) if used is None or i in used else None for i, c in enumerate(native.constants)]


# --- the wrapper module ------------------------------------------------------------------------

def _io_meta(specs) -> list[dict]:
    return [{"name": s.name, "shape": [int(d) for d in s.shape], "dtype": np.dtype(s.dtype).name} for s in specs]


def metadata(native, target: AotTarget, inputs, outputs, graph_metadata: dict | None = None,
             extra: dict | None = None) -> dict:
    """What a loader needs besides the code: everything the Python loader reads (as JSON)."""
    from convc import __version__
    consts = used_constants(native)
    meta = {
        "abi": abi.ABI_VERSION, "convc_version": __version__, "name": getattr(native, "name", "") or native.ir_module.name,
        "triple": target.triple, "cpu": target.cpu, "target": target.name, "features": list(target.required),
        "inputs": _io_meta(inputs), "outputs": _io_meta(outputs),
        "arena_bytes": int(native.arena_bytes), "threads": int(native.threads),
        "constants": len(consts), "kernel_names": [op for op, _ in native.kernel_names],
        "graph_metadata": _jsonable(graph_metadata or {}),
    }
    meta.update(extra or {})
    return meta


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[str(k)] = v
    return out


def _use_incbin(target: AotTarget) -> bool:
    """Module-level .incbin needs the target's assembly parser (llvmlite registers only the host's)
    and ELF section syntax."""
    from convc.codegen.jit import Target
    elf = not any(s in target.triple for s in ("darwin", "apple", "windows", "msvc", "mingw"))
    return elf and target.arch == Target.host().triple.split("-")[0]


def wrapper_ir(native, target: AotTarget, meta: dict, blob_path: str | None, blob_size: int,
               offsets: Sequence[int | None], blob: np.ndarray | None = None, *, runtime: str | None = None,
               tables: dict[str, Sequence[int | None]] | None = None) -> str:
    """The C ABI around ``convc_run``, its metadata and the constant table, as LLVM IR text.

    ``runtime`` replaces convc_create / convc_run_model (a training library has its own, see
    codegen/aot_train.py); ``tables`` adds more constant tables (global name -> blob offsets)."""
    t = _IrText()
    base_cpu = "x86-64" if target.is_x86 else "generic"
    base_feat = "+cx8,+fxsr,+mmx,+sse,+sse2,+x87" if target.is_x86 else ("+neon" if target.arch == "aarch64" else "")
    header = [f'attributes #0 = {{ nounwind "target-cpu"="{base_cpu}" "target-features"="{base_feat}" }}']

    # the weights and the table of pointers into them
    if blob_size:
        if blob_path is not None:
            path = os.path.abspath(blob_path).replace("\\", "\\\\").replace('"', '\\"')
            asm = [".pushsection .rodata.convc_weights,\"a\",%progbits", ".p2align 6", ".globl convc_weights",
                   ".hidden convc_weights", ".type convc_weights,%object", "convc_weights:", f'.incbin "{path}"',
                   f".size convc_weights, {blob_size}", ".popsection"]
            header += [f'module asm "{_cstr(a)[0][2:-4]}"' for a in asm]
            t.lines.append(f"@convc_weights = external hidden constant [{blob_size} x i8], align 64")
        else:
            t.lines.append(f"@convc_weights = internal constant [{blob_size} x i8] "
                           f'c"{_escaped_bytes(blob)}", align 64')
        entries = ["null" if off is None else f"getelementptr (i8, ptr @convc_weights, i64 {off})" for off in offsets]
    else:
        entries = ["null"] * len(offsets)
    n_const = max(1, len(entries))
    entries = entries or ["null"]
    t.lines.append("@convc_constant_table_data = internal constant [%d x ptr] [%s], align 64"
                   % (n_const, ", ".join(f"ptr {e}" for e in entries)))
    for name, offs in (tables or {}).items():
        more = ["null" if off is None else f"getelementptr (i8, ptr @convc_weights, i64 {off})" for off in offs]
        t.lines.append("@%s = internal constant [%d x ptr] [%s], align 64"
                       % (name, max(1, len(more)), ", ".join(f"ptr {e}" for e in more or ["null"])))
    t.getter("convc_constant_table", "ptr", "@convc_constant_table_data")
    t.getter("convc_num_constants", "i32", str(len(offsets)))

    # metadata
    t.getter("convc_abi_version", "i32", str(abi.ABI_VERSION))
    t.getter("convc_version", "ptr", t.string(meta["convc_version"]))
    t.getter("convc_model_name", "ptr", t.string(meta["name"]))
    t.getter("convc_target_triple", "ptr", t.string(target.triple))
    t.getter("convc_target_cpu", "ptr", t.string(target.cpu))
    t.getter("convc_cpu_features", "ptr", t.string(",".join(target.required)))
    t.getter("convc_metadata_json", "ptr", t.string(json.dumps(meta, separators=(",", ":"))))
    t.getter("convc_max_threads", "i32", str(int(native.threads)))
    t.getter("convc_arena_bytes", "i64", str(int(native.arena_bytes)))
    for kind, specs in (("input", meta["inputs"]), ("output", meta["outputs"])):
        n = len(specs)
        t.getter(f"convc_num_{kind}s", "i32", str(n))
        if not n:
            for fn, ret, default in (("name", "ptr", "null"), ("dtype", "ptr", "null"), ("rank", "i32", "-1"),
                                     ("shape", "ptr", "null"), ("size", "i64", "-1")):
                t.lines.append(f"define {ret} @convc_{kind}_{fn}(i32 %i) #0 {{\n  ret {ret} {default}\n}}")
            continue
        names = t.array("ptr", [t.string(s["name"]) for s in specs])
        dtypes = t.array("ptr", [t.string(s["dtype"]) for s in specs])
        ranks = t.array("i32", [str(len(s["shape"])) for s in specs], 4)
        shapes = t.array("ptr", [t.array("i64", [str(d) for d in s["shape"]]) for s in specs])
        sizes = t.array("i64", [str(int(np.prod(s["shape"], dtype=np.int64))) for s in specs])
        t.indexed(f"convc_{kind}_name", "ptr", names, n, "null")
        t.indexed(f"convc_{kind}_dtype", "ptr", dtypes, n, "null")
        t.indexed(f"convc_{kind}_rank", "i32", ranks, n, "-1")
        t.indexed(f"convc_{kind}_shape", "ptr", shapes, n, "null")
        t.indexed(f"convc_{kind}_size", "i64", sizes, n, "-1")

    # the CPU check
    feats = list(target.required)
    nfeat = len(feats)
    t.indexed("convc_cpu_feature", "ptr", t.array("ptr", [t.string(f) for f in feats]), nfeat, "null") if nfeat else \
        t.lines.append("define ptr @convc_cpu_feature(i32 %i) #0 {\n  ret ptr null\n}")
    if target.is_x86:
        rows = [X86_CPUID.get(f) for f in feats]
        for nm, col, ty in (("checked", None, "i8"), ("leaf", 0, "i32"), ("sub", 1, "i32"), ("reg", 2, "i32"),
                            ("bit", 3, "i32"), ("xcr0", 4, "i64")):
            vals = [str(int(r is not None)) if col is None else str(r[col] if r else 0) for r in rows]
            body = "[" + ", ".join(f"{ty} {v}" for v in vals) + "]" if vals else "zeroinitializer"
            t.lines.append(f"@.convc.feat.{nm} = private unnamed_addr constant [{nfeat} x {ty}] {body}")
        check = _X86_CHECK
    else:
        check = _OTHER_CHECK
    const_table = "@convc_constant_table_data"
    body = (check + _COMMON + _DECLS + (runtime if runtime is not None else _RUNTIME)).replace("NFEAT", str(nfeat)).replace("ARENA", str(max(ALIGN, align_up(native.arena_bytes))))
    body = body.replace("CONSTTABLE", const_table).replace("MAXTHREADS", str(max(1, int(native.threads))))
    return "\n".join(header + t.lines) + "\n" + body


# --- the header --------------------------------------------------------------------------------

def header_text(meta: dict, target: AotTarget, library: str, guard: str, extra_decls: str = "") -> str:
    checked, unchecked = checkable(target)

    def io_lines(kind: str) -> str:
        return "\n".join(f" *   {kind} {i}: {c_string(s['name']):24} {c_escape(s['dtype'])} [{', '.join(map(str, s['shape']))}]"
                         f" ({int(np.prod(s['shape'], dtype=np.int64))} elements)"
                         for i, s in enumerate(meta[kind + "s"]))
    import textwrap
    features = "\n".join(" *     " + line for line in textwrap.wrap(c_escape(", ".join(target.required)) or "(baseline)", 88))
    defines = [f"#define CONVC_NUM_INPUTS {len(meta['inputs'])}", f"#define CONVC_NUM_OUTPUTS {len(meta['outputs'])}"]
    for kind in ("input", "output"):
        for i, s in enumerate(meta[kind + "s"]):
            defines.append(f"#define CONVC_{kind.upper()}{i}_SIZE {int(np.prod(s['shape'], dtype=np.int64))}")
    return f"""/* {c_string(Path(library).name)}: the model {c_string(meta['name'])} compiled ahead of time by convc {c_escape(meta['convc_version'])}.
 *
 * Generated file: do not edit. The library depends only on libc, libm and pthreads.
 * Target: {c_escape(target.name)} ({c_escape(target.triple)}, cpu {c_escape(target.cpu)}); compiled for up to {meta['threads']} thread(s).
 *
 * Tensors are dense row-major float32 arrays (C order) with these fixed shapes:
{io_lines('input')}
{io_lines('output')}
 *
 * Usage:
 *     if (convc_abi_version() != CONVC_ABI_VERSION || convc_check_cpu() != 0) {{ ...refuse... }}
 *     convc_ctx *ctx = convc_create(0);               // 0: the compiled thread count
 *     const float *in[CONVC_NUM_INPUTS] = {{ x }};
 *     float *out[CONVC_NUM_OUTPUTS] = {{ y }};
 *     convc_run_model(ctx, in, out);
 *     convc_destroy(ctx);
 *
 * Threads: a context owns an arena (activations and scratch) and a pool of worker threads. One
 * context runs one call at a time; create one context per thread that runs the model concurrently.
 * The weights are read-only and shared by all contexts.
 *
 * CPU: the code uses these CPU features:
{features}
 * convc_check_cpu() verifies {'all of them' if not unchecked else f'{len(checked)} of them (not checkable: {c_escape(", ".join(unchecked))})'}
 * on the running CPU (and, on x86, that the OS enables the AVX/AVX-512/AMX registers). The metadata
 * functions and convc_check_cpu are compiled for the architecture's baseline, so they are safe
 * to call on any CPU; call convc_check_cpu before anything else. convc_create refuses (NULL)
 * when the check fails.
 */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define CONVC_ABI_VERSION {abi.ABI_VERSION}
{chr(10).join(defines)}

typedef struct convc_ctx convc_ctx;

/* --- running the model --- */

/* A context: allocates the arena ({meta['arena_bytes']} bytes, 64-byte aligned) and starts
 * nthreads-1 worker threads (nthreads <= 0 or above {meta['threads']}: {meta['threads']}). NULL when
 * this CPU lacks a required feature or memory runs out. */
convc_ctx *convc_create(int nthreads);
void convc_destroy(convc_ctx *ctx);

/* Run once: inputs[i] points to convc_input_size(i) floats, outputs[i] to convc_output_size(i)
 * floats the call overwrites. Returns 0, or 1 when ctx, inputs or outputs is NULL. */
int convc_run_model(convc_ctx *ctx, const float *const *inputs, float *const *outputs);

/* --- metadata (safe to call on any CPU of the architecture) --- */

int convc_abi_version(void);            /* CONVC_ABI_VERSION of the library */
const char *convc_version(void);        /* the convc version that built it */
const char *convc_model_name(void);
const char *convc_target_triple(void);
const char *convc_target_cpu(void);
const char *convc_metadata_json(void);  /* everything below as one JSON object */
int convc_max_threads(void);
int64_t convc_arena_bytes(void);

int convc_num_inputs(void);
int convc_num_outputs(void);
const char *convc_input_name(int i);    /* NULL when i is out of range */
const char *convc_output_name(int i);
const char *convc_input_dtype(int i);   /* "float32" */
const char *convc_output_dtype(int i);
int convc_input_rank(int i);            /* -1 when i is out of range */
int convc_output_rank(int i);
const int64_t *convc_input_shape(int i);
const int64_t *convc_output_shape(int i);
int64_t convc_input_size(int i);        /* elements */
int64_t convc_output_size(int i);

/* --- CPU check --- */

const char *convc_cpu_features(void);   /* required features, comma-separated LLVM names */
int convc_check_cpu(void);              /* 0: this CPU runs the library; else the number missing */
const char *convc_cpu_feature(int i);   /* the i-th required feature */
int convc_cpu_feature_ok(int i);        /* 1 when the running CPU has it (or it cannot be checked) */

{extra_decls}/* --- the raw entry point (convc's own runtime uses it; prefer convc_run_model) --- */

/* ctx[0] = 64-byte aligned arena, ctx[1] = convc_constant_table(), ctx[2] = NULL,
 * ctx[3] = a pool from convc_pool_create(n) or NULL (single-threaded). */
void convc_run(void **ctx, const float *const *inputs, float *const *outputs);
void *const *convc_constant_table(void);
int convc_num_constants(void);
void *convc_pool_create(int64_t nthreads);
void convc_pool_destroy(void *pool);

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""


# --- linking -----------------------------------------------------------------------------------

def find_cc(target: AotTarget) -> list[str] | None:
    """The C compiler driver that links the library: $CC, else cc/gcc/clang (a cross gcc for another arch)."""
    from convc.codegen.jit import Target
    if os.environ.get("CC"):
        import shlex
        return shlex.split(os.environ["CC"])
    host_arch = Target.host().triple.split("-")[0]
    names = ["cc", "gcc", "clang"] if target.arch == host_arch else [f"{target.arch}-linux-gnu-gcc"]
    for name in names:
        path = shutil.which(name)
        if path:
            return [path]
    if target.arch != host_arch and shutil.which("clang"):
        return [shutil.which("clang"), f"--target={target.triple}", "-fuse-ld=lld"]
    return None


def no_cc_message(target: AotTarget, obj: str, lib: str) -> str:
    from convc.codegen.jit import Target
    cross = target.arch != Target.host().triple.split("-")[0]
    what = (f"a cross C toolchain for {target.arch} (Debian/Ubuntu: apt-get install gcc-{target.arch}-linux-gnu)"
            if cross else "a C compiler (Debian/Ubuntu: apt-get install gcc; Fedora/RHEL: dnf install gcc; "
                          "Alpine: apk add gcc musl-dev; macOS: xcode-select --install)")
    cc = f"{target.arch}-linux-gnu-gcc" if cross else "cc"
    return (f"linking {lib} needs {what}, or set CC to one. The object file was written to {obj}: "
            f"link it yourself with `{cc} -shared -o {lib} {obj} -lm -lpthread`, or ask for the object "
            f"only with -o {Path(lib).with_suffix('.o').name}")


def link_shared(obj: str, lib: str, target: AotTarget, soname: str | None = None) -> None:
    cc = find_cc(target)
    if cc is None:
        raise CompileError(no_cc_message(target, obj, lib))
    # -soname: programs linked against it look for "model.so" (on their rpath), not the build path;
    # -Bsymbolic: its calls to its own functions never bind to another model's library
    cmd = cc + ["-shared", "-o", lib, obj, f"-Wl,-soname,{soname or Path(lib).name}",
                "-Wl,-Bsymbolic", "-Wl,-z,noexecstack", "-lm", "-lpthread"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise CompileError(f"cannot run the C compiler {cc[0]}: {e}") from None
    if done.returncode != 0:
        raise CompileError(f"linking {lib} failed ({' '.join(cmd)}):\n{done.stderr.strip()}")


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
                 constants: list | None = None, runtime: str | None = None,
                 tables: dict[str, Sequence[int | None]] | None = None, modules: tuple[str, ...] = (),
                 speed: int = 3, extra_decls: str = "") -> BuildResult:
    """Write a NativeModule as a shared library (``output`` ending in .so/.dylib) or object file (.o),
    plus its C header (default: the output's name with .h).

    The rest is for training libraries (codegen/aot_train.py): ``constants`` is the whole blob's
    contents (the module's constant table first), ``runtime``/``tables`` go to ``wrapper_ir``,
    ``modules`` are more IR modules linked in before optimization at level ``speed``."""
    from convc.codegen.jit import machine_code
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
        blob_path = None
        blob = None
        if size and _use_incbin(target):
            blob_path = os.path.join(tmp, "weights.bin")
            with open(blob_path, "wb") as f:
                write_blob(f, consts, offsets, size)
        elif size:
            import io
            buf = io.BytesIO()
            write_blob(buf, consts, offsets, size)
            blob = np.frombuffer(buf.getbuffer(), dtype=np.uint8)
        t = time.perf_counter()
        wrapper = wrapper_ir(native, target, meta, blob_path, size, offsets[:len(native.constants)], blob,
                             runtime=runtime, tables=tables)
        timings["wrapper IR"] = time.perf_counter() - t
        t = time.perf_counter()
        _init_backend(target)
        obj = machine_code(str(native.ir_module), target.llvm_target(), pic=True, link=wrapper, modules=modules,
                           speed=speed, progress=progress)
        timings["LLVM"] = time.perf_counter() - t
        guard = "CONVC_" + c_identifier(header_path.stem.upper()) + "_H"
        atomic_write(header_path, header_text(meta, target, str(out), guard, extra_decls).encode())
        if object_only:
            atomic_write(out, obj)
        elif find_cc(target) is None:  # keep the object where the user can link it, then say what is missing
            kept = out.with_suffix(".o")
            atomic_write(kept, obj)
            raise CompileError(no_cc_message(target, str(kept), str(out)))
        else:
            if progress:
                progress("linking " + out.name)
            t = time.perf_counter()
            obj_path = Path(tmp) / (out.stem + ".o")
            obj_path.write_bytes(obj)
            tmp_lib = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                link_shared(str(obj_path), str(tmp_lib), target, soname=out.name)
                sign_library(tmp_lib, abi.ABI_VERSION)  # convc.load checks it before dlopen
                os.replace(tmp_lib, out)
            finally:
                if tmp_lib.exists():
                    tmp_lib.unlink()
            timings["link"] = time.perf_counter() - t
    return BuildResult(out, header_path, target, meta, time.perf_counter() - t0, object_only, size, timings)


def build(model: Any, output: str | os.PathLike, *, batch: int | None = None, target: str | AotTarget = "native",
          threads: int | None = None, input_shape: Any = None, progress: Callable[[str], None] | None = None,
          header: str | os.PathLike | None = None) -> BuildResult:
    """Compile ``model`` (whatever ``convc.compile`` takes) to a shared library or object file."""
    from convc.codegen.module import emit_module
    from convc.compiler import default_threads, load_graph
    from convc.passes.pipeline import pipeline
    from convc.runtime import IOSpec
    tgt = resolve_target(target)
    if isinstance(model, Path):
        model = str(model)
    if progress:
        progress("import")
    graph = load_graph(model, batch, input_shape)
    plan = pipeline(graph, progress=progress)
    threads = default_threads() if threads is None else max(1, int(threads))
    if progress:
        progress("code generation")
    native = emit_module(plan, name=graph.name, threads=threads, target=tgt.llvm_target(), progress=progress)
    g = plan.graph
    specs = [[IOSpec(n, g.tensor(n).shape, g.tensor(n).dtype) for n in names]
             for names in (native.input_names, native.output_names)]
    return build_native(native, output, tgt, *specs, graph_metadata=g.metadata, progress=progress, header=header)


def _init_backend(target: AotTarget) -> None:
    """Register every LLVM backend for a cross target (the JIT registers only the host's)."""
    import llvmlite.binding as llvm
    from convc.codegen.jit import Target, init_llvm
    init_llvm()
    if target.arch != Target.host().triple.split("-")[0]:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
    try:
        llvm.Target.from_triple(target.triple)
    except RuntimeError as e:
        raise CompileError(f"target {target.name}: this llvmlite's LLVM cannot generate code for {target.triple} "
                           f"({e})") from None

