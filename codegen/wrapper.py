"""The C ABI of a library, as an LLVM module built with llvmlite's IRBuilder.

A library (codegen/aot.py, codegen/aot_train.py) links this module beside the model's: the weights
and the constant table pointing into them, the metadata functions, the CPU check and the context
functions (``convc_create`` / ``convc_destroy`` / ``convc_run_model``). The names are those of
convc/abi.py; the C header (codegen/header.py) declares them.

Every function here carries the architecture's baseline target attributes (``x86-64``/``generic``):
a loader calls the metadata functions and ``convc_check_cpu`` before it knows the CPU can run the
kernels. On x86 the check reads CPUID and XCR0 (the OS must save the AVX / AVX-512 / AMX registers)
for each required feature it knows (``X86_CPUID``); ``convc_create`` returns NULL on a CPU that
fails it.

Weights. When the target's integrated assembler is available (a target of the host architecture),
the module carries ``module asm`` with ``.incbin`` of the blob file, and LLVM's assembler copies the
file into the object in a fraction of a second. Cross targets (aarch64 from x86-64) get the bytes as
an escaped ``c"..."`` constant instead: llvmlite registers only the host's assembly parser, and
inline assembly for any other target would abort the process. Both beat an ``ir.Constant`` of the
bytes, which formats every byte in Python (100 MB of weights: minutes).
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import numpy as np
from convc.codegen.artifacts import ALIGN
from convc.codegen.blob import align_up, write_blob
from convc.codegen.llvm_utils import I8, I32, I64, PTR, VOID, alloca_entry, for_range, gep, i64, intrinsic, memcpy
from convc.codegen.target import X86_CPUID, AotTarget
from llvmlite import ir

from convc import abi
from convc.abi import CONTEXT_SLOTS, ENTRY_SLOTS, Slot

_CPUID = ir.LiteralStructType([I32] * 4)  # eax, ebx, ecx, edx
_EXTENDED_LEAVES = 0x8000_0000
_OSXSAVE = 1 << 27  # CPUID.1:ECX: the OS enabled XGETBV


class _BaselineAttributes(ir.FunctionAttributes):
    """``nounwind`` and the architecture's baseline CPU as string attributes, which llvmlite's
    FunctionAttributes does not know."""

    def __init__(self, cpu: str, features: str) -> None:
        super().__init__(["nounwind"])
        self._strings = [f'"target-cpu"="{cpu}"', f'"target-features"="{features}"']

    def _to_list(self, ret_type):
        return super()._to_list(ret_type) + self._strings


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, int(v))


def _null() -> ir.Constant:
    return ir.Constant(PTR, None)


def _asm_string(line: str) -> str:
    """A ``module asm`` line's contents, escaped as LLVM escapes string literals."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\{ord(c):02X}" for c in line)


def _escaped_bytes(data: np.ndarray) -> str:
    """Every byte as \\XX, vectorized (the weights without an assembler)."""
    digits = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
    raw = np.asarray(data, dtype=np.uint8).reshape(-1)
    out = np.empty((raw.size, 3), dtype=np.uint8)
    out[:, 0] = ord("\\")
    out[:, 1] = digits[raw >> 4]
    out[:, 2] = digits[raw & 15]
    return out.tobytes().decode("ascii")


class Wrapper:
    """The wrapper module of one library and the helpers that add functions and constants to it."""

    def __init__(self, target: AotTarget) -> None:
        self.target = target
        self.module = ir.Module(name="convc_wrapper")
        cpu = "x86-64" if target.is_x86 else "generic"
        features = "+cx8,+fxsr,+mmx,+sse,+sse2,+x87" if target.is_x86 else "+neon" if target.arch == "aarch64" else ""
        self._attributes = (cpu, features)
        self._asm: list[str] = []
        self.weights: ir.GlobalVariable | None = None

    def text(self) -> str:
        """The module's IR; ``module asm`` goes after the target lines, which LLVM reads first."""
        head, sep, body = str(self.module).partition("\n\n")
        asm = "".join(f'module asm "{_asm_string(line)}"\n' for line in self._asm)
        return head + sep + asm + body

    # --- building blocks -----------------------------------------------------------------------
    def function(self, name: str, ret: ir.Type, args: Sequence[ir.Type] = (), *,
                 internal: bool = False) -> tuple[ir.Function, ir.IRBuilder]:
        """A function with the baseline attributes, and a builder at its entry."""
        fn = ir.Function(self.module, ir.FunctionType(ret, list(args)), name=name)
        fn.attributes = _BaselineAttributes(*self._attributes)
        if internal:
            fn.linkage = "internal"
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def extern(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        """A function defined elsewhere (libc, the model's module), declared once."""
        return intrinsic(self.module, name, ret, args)

    def _constant(self, value: ir.Constant, name: str, align: int) -> ir.GlobalVariable:
        gv = ir.GlobalVariable(self.module, value.type, name=self.module.get_unique_name(name))
        gv.linkage = "private"
        gv.unnamed_addr = True
        gv.global_constant = True
        gv.initializer = value
        gv.align = align
        return gv

    def string(self, text: str | bytes) -> ir.GlobalVariable:
        """A NUL-terminated C string."""
        data = (text.encode() if isinstance(text, str) else bytes(text)) + b"\0"
        return self._constant(ir.Constant(ir.ArrayType(I8, len(data)), bytearray(data)), "str", 1)

    def array(self, elem: ir.Type, values: Sequence, align: int = 8) -> ir.GlobalVariable:
        """A constant array of ``elem`` (integers, or constants and globals for ``PTR``)."""
        ty = ir.ArrayType(elem, len(values))
        items = [v if isinstance(v, ir.Value) else ir.Constant(elem, v) for v in values]
        return self._constant(ir.Constant(ty, items if items else None), "arr", align)

    def getter(self, name: str, ret: ir.Type, value) -> None:
        """``ret name(void)`` returning a constant."""
        _, b = self.function(name, ret)
        b.ret(value if isinstance(value, ir.Value) else ir.Constant(ret, value))

    def indexed(self, name: str, ret: ir.Type, values: Sequence, default, align: int = 8) -> None:
        """``ret name(int i)``: ``values[i]`` for 0 <= i < len(values), else ``default``."""
        fn, b = self.function(name, ret, [I32])
        default = default if isinstance(default, ir.Value) else ir.Constant(ret, default)
        if not values:
            b.ret(default)
            return
        table = self.array(ret, values, align)
        inside, outside = fn.append_basic_block("in"), fn.append_basic_block("out")
        i = fn.args[0]
        b.cbranch(b.icmp_unsigned("<", i, _i32(len(values))), inside, outside)
        b.position_at_end(inside)
        b.ret(b.load(b.gep(table, [i64(0), b.zext(i, I64)], inbounds=True, source_etype=table.value_type), typ=ret))
        b.position_at_end(outside)
        b.ret(default)

    def spec_table(self, table: abi.SpecTable, specs: Sequence[tuple[str, str, Sequence[int]]]) -> None:
        """The functions that describe a list of tensors, given (name, dtype, shape) for each."""
        self.getter(table.count, I32, len(specs))
        self.indexed(table.function("name"), PTR, [self.string(n) for n, _, _ in specs], _null())
        self.indexed(table.function("dtype"), PTR, [self.string(d) for _, d, _ in specs], _null())
        self.indexed(table.function("rank"), I32, [len(s) for _, _, s in specs], -1, align=4)
        self.indexed(table.function("shape"), PTR, [self.array(I64, [int(d) for d in s]) for _, _, s in specs], _null())
        self.indexed(table.function("size"), I64, [int(np.prod(s, dtype=np.int64)) for _, _, s in specs], -1)

    def guard(self, fn: ir.Function, b: ir.IRBuilder, pointers: Sequence[ir.Value], fail) -> None:
        """Return ``fail`` (None: return void) when any of ``pointers`` is NULL; the builder goes on
        where none is."""
        null = b.icmp_unsigned("==", pointers[0], _null())
        for p in pointers[1:]:
            null = b.or_(null, b.icmp_unsigned("==", p, _null()))
        go, bad = fn.append_basic_block("go"), fn.append_basic_block("null")
        b.cbranch(null, bad, go)
        b.position_at_end(bad)
        if fail is None:
            b.ret_void()
        else:
            b.ret(fail if isinstance(fail, ir.Value) else ir.Constant(fn.function_type.return_type, fail))
        b.position_at_end(go)

    def weight_pointer(self, offset: int | None) -> ir.Constant:
        """The address of the blob at ``offset`` (NULL for None, or when there is no blob)."""
        if offset is None or self.weights is None:
            return _null()
        return ir.FormattedConstant(PTR, f"getelementptr inbounds (i8, ptr {self.weights.get_reference()}, "
                                         f"i64 {int(offset)})")

    # --- the library's parts ------------------------------------------------------------------------
    def embed_weights(self, constants: Sequence[np.ndarray | None], offsets: Sequence[int | None], size: int,
                      workdir: str | os.PathLike) -> None:
        """The blob of ``constants`` at ``offsets`` (codegen/blob.py): a file in ``workdir`` the
        assembler includes (``.incbin``), or, for a cross target, the bytes as a constant."""
        if not size:
            return
        ty = ir.ArrayType(I8, size)
        self.weights = gv = ir.GlobalVariable(self.module, ty, name="convc_weights")
        gv.global_constant = True
        gv.align = ALIGN
        if self._can_incbin():
            path = os.path.join(workdir, "weights.bin")
            with open(path, "wb") as f:
                write_blob(f, constants, offsets, size)
            escaped = os.path.abspath(path).replace("\\", "\\\\").replace('"', '\\"')
            self._asm += [".pushsection .rodata.convc_weights,\"a\",%progbits", ".p2align 6",
                          ".globl convc_weights", ".hidden convc_weights", ".type convc_weights,%object",
                          "convc_weights:", f'.incbin "{escaped}"', f".size convc_weights, {size}", ".popsection"]
            gv.linkage = "external"
            gv.storage_class = "hidden"  # llvmlite writes it where LLVM reads the visibility
        else:
            buf = io.BytesIO()
            write_blob(buf, constants, offsets, size)
            gv.linkage = "internal"
            gv.initializer = ir.FormattedConstant(ty, f'c"{_escaped_bytes(np.frombuffer(buf.getbuffer(), np.uint8))}"')

    def _can_incbin(self) -> bool:
        """Module-level .incbin needs the target's assembly parser (llvmlite registers only the
        host's) and ELF section syntax."""
        triple = self.target.triple
        elf = not any(s in triple for s in ("darwin", "apple", "windows", "msvc", "mingw"))
        return elf and not self.target.is_cross

    def pointer_table(self, name: str, offsets: Sequence[int | None]) -> ir.GlobalVariable:
        """An internal table of pointers into the blob (at least one entry, as C arrays are)."""
        entries = [self.weight_pointer(off) for off in offsets] or [_null()]
        ty = ir.ArrayType(PTR, len(entries))
        gv = ir.GlobalVariable(self.module, ty, name=name)
        gv.linkage = "internal"
        gv.global_constant = True
        gv.initializer = ir.Constant(ty, entries)
        gv.align = ALIGN
        return gv

    def metadata(self, meta: dict, n_constants: int, table: ir.GlobalVariable) -> None:
        target = self.target
        self.getter(abi.CONSTANT_TABLE, PTR, table)
        self.getter(abi.NUM_CONSTANTS, I32, n_constants)
        self.getter(abi.ABI_VERSION_FN, I32, abi.ABI_VERSION)
        self.getter(abi.VERSION, PTR, self.string(meta["convc_version"]))
        self.getter(abi.MODEL_NAME, PTR, self.string(meta["name"]))
        self.getter(abi.TARGET_TRIPLE, PTR, self.string(target.triple))
        self.getter(abi.TARGET_CPU, PTR, self.string(target.cpu))
        self.getter(abi.CPU_FEATURES, PTR, self.string(",".join(target.required)))
        self.getter(abi.METADATA_JSON, PTR, self.string(json.dumps(meta, separators=(",", ":"))))
        self.getter(abi.MAX_THREADS, I32, int(meta["threads"]))
        self.getter(abi.ARENA_BYTES, I64, int(meta["arena_bytes"]))
        for table_fns, specs in ((abi.INPUTS, meta["inputs"]), (abi.OUTPUTS, meta["outputs"])):
            self.spec_table(table_fns, [(s["name"], s["dtype"], s["shape"]) for s in specs])

    def cpu_check(self) -> ir.Function:
        """convc_cpu_feature(i), convc_cpu_feature_ok(i) and convc_check_cpu() (the number missing)."""
        features = list(self.target.required)
        self.indexed(abi.CPU_FEATURE, PTR, [self.string(f) for f in features], _null())
        ok = self._x86_feature_ok(features) if self.target.is_x86 else self._assumed_feature_ok(len(features))
        check, b = self.function(abi.CHECK_CPU, I32)
        missing = alloca_entry(b, I32, "missing")
        b.store(_i32(0), missing)
        with for_range(b, len(features)) as i:
            bad = b.xor(b.call(ok, [b.trunc(i, I32)]), _i32(1))
            b.store(b.add(b.load(missing, typ=I32), bad), missing)
        b.ret(b.load(missing, typ=I32))
        return check

    def _assumed_feature_ok(self, n: int) -> ir.Function:
        """Without a way to ask the CPU: every feature of the table is taken as present."""
        fn, b = self.function(abi.CPU_FEATURE_OK, I32, [I32])
        b.ret(b.zext(b.icmp_unsigned("<", fn.args[0], _i32(n)), I32))
        return fn

    def _x86_feature_ok(self, features: list[str]) -> ir.Function:
        rows = [X86_CPUID.get(f) for f in features]
        checked = self.array(I8, [int(r is not None) for r in rows], 1)
        columns = [self.array(ty, [r[col] if r else 0 for r in rows], 8)
                   for col, ty in ((0, I32), (1, I32), (2, I32), (3, I32), (4, I64))]  # leaf, sub, reg, bit, xcr0
        cpuid_reg, xcr0 = self._cpuid_functions()
        fn, b = self.function(abi.CPU_FEATURE_OK, I32, [I32])
        yes, no = fn.append_basic_block("yes"), fn.append_basic_block("no")
        look, ask, os_check, xgetbv = (fn.append_basic_block(n) for n in ("look", "cpuid", "os", "xgetbv"))
        i = fn.args[0]
        b.cbranch(b.icmp_unsigned("<", i, _i32(len(features))), look, no)
        b.position_at_end(look)
        k = b.zext(i, I64)

        def column(table: ir.GlobalVariable, ty: ir.Type) -> ir.Value:
            return b.load(b.gep(table, [i64(0), k], inbounds=True, source_etype=table.value_type), typ=ty)

        b.cbranch(b.icmp_unsigned("==", column(checked, I8), ir.Constant(I8, 0)), yes, ask)
        b.position_at_end(ask)
        leaf, sub, reg, bit = (column(c, I32) for c in columns[:4])
        value = b.call(cpuid_reg, [leaf, sub, reg])
        has = b.and_(b.lshr(value, bit), _i32(1))
        b.cbranch(b.icmp_unsigned("!=", has, _i32(0)), os_check, no)
        b.position_at_end(os_check)
        mask = column(columns[4], I64)
        b.cbranch(b.icmp_unsigned("==", mask, i64(0)), yes, xgetbv)
        b.position_at_end(xgetbv)
        enabled = b.icmp_unsigned("==", b.and_(b.call(xcr0, []), mask), mask)
        b.cbranch(enabled, yes, no)
        b.position_at_end(yes)
        b.ret(_i32(1))
        b.position_at_end(no)
        b.ret(_i32(0))
        return fn

    def _cpuid_functions(self) -> tuple[ir.Function, ir.Function]:
        """cpuid_reg(leaf, sub, reg): register ``reg`` (0..3 = eax..edx) of CPUID, 0 for a leaf
        above the CPU's maximum; xcr0(): the register of OS-enabled state, 0 without OSXSAVE."""
        cpuid, b = self.function("convc_cpuid", _CPUID, [I32, I32], internal=True)
        b.ret(b.asm(ir.FunctionType(_CPUID, [I32, I32]), "cpuid",
                    "={ax},={bx},={cx},={dx},{ax},{cx},~{dirflag},~{fpsr},~{flags}", list(cpuid.args), True))

        reg_fn, b = self.function("convc_cpuid_reg", I32, [I32, I32, I32], internal=True)
        leaf, sub, reg = reg_fn.args
        read, none = reg_fn.append_basic_block("read"), reg_fn.append_basic_block("none")
        base = b.select(b.icmp_unsigned(">=", leaf, _i32(_EXTENDED_LEAVES)), _i32(_EXTENDED_LEAVES), _i32(0))
        highest = b.extract_value(b.call(cpuid, [base, _i32(0)]), 0)
        b.cbranch(b.icmp_unsigned("<=", leaf, highest), read, none)
        b.position_at_end(read)
        regs = b.call(cpuid, [leaf, sub])
        value = b.extract_value(regs, 3)
        for r in (2, 1, 0):
            value = b.select(b.icmp_unsigned("==", reg, _i32(r)), b.extract_value(regs, r), value)
        b.ret(value)
        b.position_at_end(none)
        b.ret(_i32(0))

        xcr0, b = self.function("convc_xcr0", I64, internal=True)
        read, none = xcr0.append_basic_block("read"), xcr0.append_basic_block("none")
        ecx = b.call(reg_fn, [_i32(1), _i32(0), _i32(2)])
        b.cbranch(b.icmp_unsigned("!=", b.and_(ecx, _i32(_OSXSAVE)), _i32(0)), read, none)
        b.position_at_end(read)
        pair = ir.LiteralStructType([I32, I32])
        r = b.asm(ir.FunctionType(pair, [I32]), "xgetbv", "={ax},={dx},{cx},~{dirflag},~{fpsr},~{flags}",
                  [_i32(0)], True)
        lo, hi = (b.zext(b.extract_value(r, n), I64) for n in (0, 1))
        b.ret(b.or_(b.shl(hi, i64(32)), lo))
        b.position_at_end(none)
        b.ret(i64(0))
        return reg_fn, xcr0

    # --- contexts -------------------------------------------------------------------------------------
    def slot(self, b: ir.IRBuilder, ctx: ir.Value, slot: Slot) -> ir.Value:
        return gep(b, ctx, int(slot), PTR)

    def destroy(self) -> None:
        """convc_destroy(ctx): stops the pool, frees the arena, the training state and the context."""
        free = self.extern("free", VOID, [PTR])
        pool_destroy = self.extern(abi.POOL_DESTROY, VOID, [PTR])
        fn, b = self.function(abi.DESTROY, VOID, [PTR])
        ctx = fn.args[0]
        with b.if_then(b.icmp_unsigned("!=", ctx, _null())):
            pool = b.load(self.slot(b, ctx, Slot.POOL), typ=PTR)
            with b.if_then(b.icmp_unsigned("!=", pool, _null())):
                b.call(pool_destroy, [pool])
            b.call(free, [b.load(self.slot(b, ctx, Slot.ARENA), typ=PTR)])
            b.call(free, [b.load(self.slot(b, ctx, Slot.STATE), typ=PTR)])
            b.call(free, [ctx])
        b.ret_void()

    def create(self, check_cpu: ir.Function, arena_bytes: int, table: ir.GlobalVariable, max_threads: int,
               state: tuple[int, int] | None = None) -> None:
        """convc_create(n): NULL when the CPU check fails or memory runs out. The context holds the
        arena and the constant table and either ``state`` = (bytes, blob offset of its initial
        image), copied into a training state, or a pool of min(n, max_threads) threads
        (max_threads for n <= 0)."""
        calloc = self.extern("calloc", PTR, [I64, I64])
        free = self.extern("free", VOID, [PTR])
        memalign = self.extern("posix_memalign", I32, [PTR, I64, I64])
        fn, b = self.function(abi.CREATE, PTR, [I32])
        fail = fn.append_basic_block("fail")

        def aligned(nbytes: int, on_failure: list[ir.Value]) -> ir.Value:
            """posix_memalign(64, nbytes); on failure free ``on_failure`` and return NULL."""
            slot = alloca_entry(b, PTR)
            ok = b.icmp_unsigned("==", b.call(memalign, [slot, i64(ALIGN), i64(nbytes)]), _i32(0))
            with b.if_then(b.not_(ok), likely=False):
                for p in on_failure:
                    b.call(free, [p])
                b.branch(fail)
            return b.load(slot, typ=PTR)

        cpu_ok = b.icmp_unsigned("==", b.call(check_cpu, []), _i32(0))
        alloc = fn.append_basic_block("alloc")
        b.cbranch(cpu_ok, alloc, fail)
        b.position_at_end(alloc)
        ctx = b.call(calloc, [i64(CONTEXT_SLOTS), i64(8)])
        got = fn.append_basic_block("got")
        b.cbranch(b.icmp_unsigned("!=", ctx, _null()), got, fail)
        b.position_at_end(got)
        arena = aligned(max(ALIGN, align_up(arena_bytes)), [ctx])
        b.store(arena, self.slot(b, ctx, Slot.ARENA))
        b.store(table, self.slot(b, ctx, Slot.CONSTANTS))
        if state is not None:
            nbytes, image = max(ALIGN, state[0]), state[1]
            s = aligned(nbytes, [arena, ctx])
            memcpy(b, s, self.weight_pointer(image), nbytes)
            b.store(s, self.slot(b, ctx, Slot.STATE))
        elif max_threads > 1:
            n = fn.args[0]
            limit = _i32(max_threads)
            t = b.select(b.icmp_signed("<=", n, _i32(0)), limit, b.select(b.icmp_signed(">", n, limit), limit, n))
            with b.if_then(b.icmp_signed(">", t, _i32(1))):
                pool = b.call(self.extern(abi.POOL_CREATE, PTR, [I64]), [b.sext(t, I64)])
                b.store(pool, self.slot(b, ctx, Slot.POOL))
        b.ret(ctx)
        b.position_at_end(fail)
        b.ret(_null())

    @staticmethod
    def pointers(b: ir.IRBuilder, n: int, name: str = "") -> ir.Value:
        """An array of ``n`` pointers on the stack, allocated in the entry block."""
        here = b.block
        b.position_at_start(b.function.entry_basic_block)
        array = b.alloca(PTR, size=i64(n), name=name)
        b.position_at_end(here)
        return array

    def entry_context(self, b: ir.IRBuilder, ctx: ir.Value, table: ir.GlobalVariable) -> ir.Value:
        """A context block for ``convc_run`` on the caller's stack: ``ctx``'s arena, ``table``, no
        timestamps and no pool (a training library runs on the calling thread)."""
        block = self.pointers(b, ENTRY_SLOTS, "ctx")
        for slot, value in ((Slot.ARENA, b.load(self.slot(b, ctx, Slot.ARENA), typ=PTR)),
                            (Slot.CONSTANTS, table), (Slot.TIMESTAMPS, _null()), (Slot.POOL, _null())):
            b.store(value, self.slot(b, block, slot))
        return block

    def run_model(self) -> None:
        """convc_run_model(ctx, inputs, outputs): 1 when an argument is NULL, else convc_run and 0."""
        entry = self.extern(abi.ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = self.function(abi.RUN_MODEL, I32, [PTR, PTR, PTR])
        self.guard(fn, b, fn.args, 1)
        b.call(entry, list(fn.args))
        b.ret(_i32(0))


def inference_wrapper(wrapper: Wrapper, meta: dict, offsets: Sequence[int | None]) -> None:
    """The whole C ABI of an inference library (the weights already embedded)."""
    table = wrapper.pointer_table("convc_constant_table_data", offsets)
    wrapper.metadata(meta, len(offsets), table)
    check = wrapper.cpu_check()
    wrapper.destroy()
    wrapper.create(check, int(meta["arena_bytes"]), table, max(1, int(meta["threads"])))
    wrapper.run_model()

