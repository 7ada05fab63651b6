"""What an ahead-of-time build is compiled for: the target (triple, CPU, LLVM features) and the CPU
features a machine must have to run it.

    native | x86-64 | x86-64-v2 | x86-64-v3 | x86-64-v4 | aarch64   [,+feature ...]

A library records the LLVM features it was compiled for. Its CPU check (codegen/wrapper.py) reads
CPUID and XCR0 on x86 (the OS must save the AVX / AVX-512 / AMX registers) through the table
``X86_CPUID`` below, so a library needing e.g. ``avx512fp16`` fails cleanly on a CPU without it,
where running a kernel would raise SIGILL.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from convc.errors import CompileError

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

    @property
    def is_cross(self) -> bool:
        """Built for another architecture than this machine's."""
        return self.arch != host_arch()


def host_arch() -> str:
    from convc.codegen.jit import Target
    return Target.host().triple.split("-")[0]


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



# --- what the CPU check verifies ---------------------------------------------------------------
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



def init_backend(target: AotTarget) -> None:
    """Register every LLVM backend for a cross target (the JIT registers only the host's)."""
    import llvmlite.binding as llvm
    from convc.codegen.jit import init_llvm
    init_llvm()
    if target.is_cross:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
    try:
        llvm.Target.from_triple(target.triple)
    except RuntimeError as e:
        raise CompileError(f"target {target.name}: this llvmlite's LLVM cannot generate code for {target.triple} "
                           f"({e})") from None

