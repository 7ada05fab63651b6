"""Split a model's LLVM module into separately compiled modules, each kernel's code once.

A model's module holds one function per kernel call (``ModuleEmitter.function``), the helpers those
kernels call (GEMM micro-kernels, tap tables, vector math), and the entry point with its
trampolines and thread pool. Compiling it as one module has two costs this split removes:

- **The same kernel many times**: ResNet-50's repeated bottleneck blocks emit byte-identical
  kernels under different names. Every definition a kernel reaches gets a *content name*: a hash
  of its IR text in which its own name and the names of the definitions it reaches are replaced by
  their content names (a Merkle hash), so identical code has one name and is kept once.
- **One core, and nothing shared across models**: the kernels are cut into *groups* (kernels that
  share a helper stay together, so LLVM inlines and specializes as it did in one module), each a
  module of its own. Groups compile in parallel (codegen/llvm_pool.py) and, being written only in
  content names and sorted, a group's text is the same in every model that has it: its object file
  is cached by that text (codegen/kernel_cache.py) and ResNet-101 reuses what ResNet-50 compiled.

The entry module keeps everything else (entry point, trampolines, thread pool, exported names) and
calls the kernels by their content names, which every group exports. An object file per module is
loaded into one MCJIT engine, which resolves those calls across them.

Definitions a kernel shares with the entry side, mutable globals and recursion keep their kernels
in the entry module (none of convc's kernels do that today; it keeps the split safe if one does).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from llvmlite import ir

# a global's reference in llvmlite's IR text: @"escaped name" or @bare.name
_REF = re.compile(r'@"(?:[^"\\]|\\[0-9A-Fa-f]{2})*"|@[-A-Za-z$._][-A-Za-z$._0-9]*')
_MD = re.compile(r"!(\d+)\b")


ENTRY_SPEED = 0  # the entry point is a list of calls: LLVM's -O2 took 2 s on DenseNet-121's for nothing
KERNEL_SPEED = 2
# Hand-vectorized kernels (the GEMM and conv micro-kernels: explicit <8 x float> FMAs in unrolled
# register tiles) get no IR optimization: LLVM's -O2 spent 60% of their compile time (ResNet-50:
# 1.3 of 2.3 s of CPU) and they ran as fast without it (ResNet-50, batch 1: 99 and 100 ms, the same
# bits); the backend still runs at -O3. So do modules that do no work on data (a conv's
# loop over register tiles computing their pixel offsets and calling a shared micro-kernel: 0.04-0.06 s
# each at -O2, 0.015 without; ResNet-50 has ten). Scalar float loops (elementwise, pooling, concat
# copies) keep -O2, whose loop vectorizer they rely on (DenseNet-121 ran 10% slower with every module
# at -O0), and so do:
# - vector kernels with vecmath's polynomials (SiLU, sigmoid epilogues: EfficientNet-B0 and the YOLO
#   net ran 3-4% slower at -O0, their 1x1 SiLU convs 2-5%, although their machine code differs little);
# - stack slots SROA promotes (a direct conv's row pointers and accumulator slots: EfficientNet-B0's
#   3-channel stem ran 30% slower at -O0); an implicit-GEMM conv's table of tile rows (``alloca i64``)
#   is handed to its micro-kernel in memory at any level, and does not count;
# - the thread pool's atomics (compiled once per machine, then cached).
VECTOR_SPEED = 0
VECTOR_SHARE = 0.2  # of a module's instructions on vectors, above which it counts as hand-vectorized
VECTOR_MIN_CHARS = 10_000  # smaller modules (pooling, small elementwise kernels) keep -O2: it costs them
                           # little, and a global average pool ran 15-40% slower without it
_PROMOTED_SLOT = re.compile(r"= alloca (?:ptr|<)")
_ATOMICS = ("atomicrmw ", "cmpxchg ", "load atomic ", "store atomic ")  # substrings: a \b regex took 10x longer
# work on data: float arithmetic, loads and stores of anything but pointers and i64 offsets (int8 and
# float elements, vectors), float intrinsics; a conv's tile loop has none (it stores row offsets)
_DATA_WORK = re.compile(r'= (?:fadd|fsub|fmul|fdiv|fneg|fcmp|frem)\b|= load (?!ptr\b|i64\b)|\bstore (?!ptr\b|i64\b)'
                        r'|@"?llvm\.[\w.]+?\.(?:v\d+)?f(?:32|64)\b')
_INSTRUCTION = re.compile(r"^  \S.*$", re.M)
_VECTOR = re.compile(r"<\d+ x ")


def kernel_speed(text: str) -> int:
    """The IR pipeline's level for a kernel module: VECTOR_SPEED for hand-vectorized code and for
    code doing no work on data (``_DATA_WORK``), else KERNEL_SPEED. Measured on convc's modules the vector
    share is bimodal (below 0.15 or above 0.3)."""
    if "llvm.fmuladd." in text or _PROMOTED_SLOT.search(text) or any(a in text for a in _ATOMICS):
        return KERNEL_SPEED  # vecmath's polynomials (@"llvm.fmuladd..."), slots SROA removes, atomics
    if not _DATA_WORK.search(text):
        return VECTOR_SPEED
    if len(text) < VECTOR_MIN_CHARS:
        return KERNEL_SPEED
    lines = _INSTRUCTION.findall(text)
    vector = sum(1 for line in lines if _VECTOR.search(line))
    return VECTOR_SPEED if lines and vector > VECTOR_SHARE * len(lines) else KERNEL_SPEED


@dataclass(frozen=True)
class SplitModule:
    """One module's IR text; ``key`` (a content hash, None for the entry module) names its object
    file in the kernel cache; ``speed`` is the LLVM IR pipeline's level for it."""
    text: str
    key: str | None
    kernels: int = 0  # kernel functions it defines
    speed: int = KERNEL_SPEED
    exports: tuple[str, ...] = ()  # the content name it defines for the other modules (a kernel group's root)


def _defines(g) -> bool:
    return isinstance(g, ir.GlobalVariable) or (isinstance(g, ir.Function) and bool(g.blocks))


class Splitter:
    """Cuts a module into kernel groups kernel by kernel, while it is still being written: JIT
    compiles hand each group to LLVM as soon as its kernel is emitted (codegen/cache.py), so that
    LLVM runs on the other cores while Python emits the next layers. ``split_module`` feeds it every
    kernel of a finished module at once; both give the same modules.

    A group is a root definition and what it reaches, copied in (small helpers, constant tables),
    except other roots, which it declares. The roots are the kernels and the out-of-line functions
    (large or noinline: GEMM micro-kernels, transpose tiles, vecmath's cold tails) that two groups
    call: compiled once, in a module of their own. A helper only one group calls stays in it, where
    LLVM inlines and specializes it as it did when the whole model was one module (MobileNetV2 ran
    2-3% slower with every micro-kernel called out of line; copying a shared one into each caller
    made ResNet-50's IR 30% larger). Whether a helper is shared is known only once every kernel is
    written: a group with a helper no earlier group used waits for ``finish``; the others are final
    when their kernel is written, and go to LLVM then."""

    def __init__(self, module: ir.Module, library: tuple[str, ...] = ()):
        self.module = module
        self.library = library
        self.globals: dict[str, ir.GlobalValue] = {}
        self.by_ref: dict[str, str] = {}
        self._text: dict[str, str] = {}
        self._refs: dict[str, set[str]] = {}
        self._content: dict[str, str | None] = {}
        self._synced = 0
        self._metadata: list[str] = []
        self.kernels: list[str] = []  # split kernels (their original names), in order
        self._kernel_set: set[str] = set()
        self.kept: list[str] = []  # kernels left in the entry module
        self.roots: set[str] = set()  # content names with a module of their own
        self.placed: set[str] = set()  # original names copied into some group
        self._users: dict[str, set[str]] = {}  # content name -> the roots of the groups that copy it
        self._held: list[tuple[str, bool]] = []  # groups that wait for finish (root, is a kernel)
        self.guesses: list[SplitModule] = []  # their modules as they are now (take_guesses)
        self.name_of: dict[str, str] = {}  # content name -> an original name

    # --- the module as it grows ------------------------------------------------------------
    def _sync(self) -> None:
        gv = self.module.globals
        if len(gv) != self._synced:
            for name, g in list(gv.items())[self._synced:]:
                self.globals[name] = g
                self.by_ref[g.get_reference()] = name
            self._synced = len(gv)

    def text(self, name: str) -> str:
        t = self._text.get(name)
        if t is None:
            t = self._text[name] = str(self.globals[name])
        return t

    def refs(self, name: str) -> set[str]:
        out = self._refs.get(name)
        if out is None:
            own = self.globals[name].get_reference()
            out = self._refs[name] = {self.by_ref[r] for r in (m.group(0) for m in _REF.finditer(self.text(name)))
                                      if r != own and r in self.by_ref}
        return out

    def metadata(self) -> list[str]:
        md = self.module.metadata
        if len(md) != len(self._metadata):
            self._metadata += [str(m) for m in md[len(self._metadata):]]
        return self._metadata

    def closure(self, name: str) -> set[str]:
        """``name`` and every definition it reaches."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n in seen or not _defines(self.globals[n]):
                continue
            seen.add(n)
            todo.extend(self.refs(n))
        return seen

    def content_name(self, name: str, visiting: frozenset = frozenset()) -> str | None:
        """The Merkle content name of a definition; None inside a cycle (left unsplit)."""
        if name in self._content:
            return self._content[name]
        if name in visiting:
            return None
        g = self.globals[name]
        subst = {}
        for r in self.refs(name):
            if _defines(self.globals[r]):
                c = self.content_name(r, visiting | {name})
                if c is None:
                    self._content[name] = None
                    return None
                subst[self.globals[r].get_reference()] = f'@"{c}"'
        own = g.get_reference()
        body = _REF.sub(lambda m: "@SELF" if m.group(0) == own else subst.get(m.group(0), m.group(0)), self.text(name))
        if isinstance(g, ir.Function) and name in self._kernel_set:
            body = body.replace("define internal ", "define ", 1)
        h = hashlib.sha256(body.encode()).hexdigest()[:24]
        c = f"convc_k{h}" if name in self._kernel_set else f"convc_h{h}"  # see CONTENT_NAME_GLOBS
        self._content[name] = c
        self.name_of.setdefault(c, name)
        return c

    # --- kernels in, modules out -----------------------------------------------------------
    def add(self, kernels: list[str], keep: frozenset[str] = frozenset()) -> list[SplitModule]:
        """The new modules the kernels ``kernels`` need (none for a kernel seen before or whose
        code another module holds already). ``keep``: kernels the entry module keeps."""
        self._sync()
        out: list[SplitModule] = []
        for k in kernels:
            if k in self._kernel_set or k in self.kept or k not in self.globals or not _defines(self.globals[k]):
                continue
            closure = self.closure(k)
            if k in keep or any(isinstance(self.globals[n], ir.GlobalVariable) and not self.globals[n].global_constant
                                for n in closure):
                self.kept.append(k)
                continue
            self._kernel_set.add(k)
            c = self.content_name(k)
            if c is None:  # recursion: left in the entry module
                self._kernel_set.discard(k)
                self.kept.append(k)
                continue
            self.kernels.append(k)
            if c not in self.roots:
                self.roots.add(c)
                out += self._group(k, kernel=True)
        return out

    def _group(self, root: str, kernel: bool, final: bool = False) -> list[SplitModule]:
        """The module of ``root`` and, first, those of the new roots it reaches. A group that copies
        an out-of-line helper no other group has used yet waits (``_held``) until ``finish``
        (``final``): a later group may need that helper too, which then gets a module of its own."""
        out: list[SplitModule] = []
        members, todo, waits = [root], [root], False
        while todo:
            n = todo.pop()
            for r in sorted(self.refs(n)):
                if not _defines(self.globals[r]) or r in members:
                    continue
                c = self.content_name(r)
                if c in self.roots:
                    continue
                if _out_of_line(self.text(r)) and not (kernel and n == root):  # not the body behind a trampoline
                    if self._users.get(c, set()) - {root}:  # another group copies it
                        self.roots.add(c)
                        out += self._group(r, kernel=False)
                        continue
                    waits = not final
                members.append(r)
                todo.append(r)
        self.placed.update(members)
        by_content = {self.content_name(n): n for n in members}
        for c in by_content:
            self._users.setdefault(c, set()).add(root)
        rc = self.content_name(root)
        ordered = sorted(by_content)
        bodies = []
        for c in ordered:
            body = self._renamed(by_content[c])
            bodies.append(body.replace("define internal ", "define ", 1) if c == rc else body)
        text = self._module_text(bodies, {f'@"{c}"' for c in ordered})
        module = SplitModule(text, hashlib.sha256(text.encode()).hexdigest(), int(kernel), kernel_speed(text),
                             exports=(rc,))
        if waits:  # most such groups stay as they are: LLVM may compile this text now, as a guess
            self._held.append((root, kernel))
            self.guesses.append(module)
            return out
        out.append(module)
        return out

    def take_guesses(self) -> list[SplitModule]:
        """The waiting groups' modules as they would be if no later group shared their helpers
        (since the last call): worth compiling early, most are final (ModuleCompiler.guess)."""
        out, self.guesses = self.guesses, []
        return out

    def _renamed(self, name: str) -> str:
        """A definition's text with every definition it names (itself too) by its content name."""
        subst = {self.globals[r].get_reference(): f'@"{self.content_name(r)}"'
                 for r in self.refs(name) | {name} if _defines(self.globals[r])}
        return _REF.sub(lambda m: subst.get(m.group(0), m.group(0)), self.text(name))

    def _declaration(self, ref: str) -> str | None:
        """The declare line of a function defined in another module (or outside convc's code)."""
        c = ref[2:-1] if ref.startswith('@"') else None
        g = self.globals[self.name_of[c]] if c in self.name_of else self.globals.get(self.by_ref.get(ref, ""))
        if not isinstance(g, ir.Function):
            return None
        if not g.blocks:
            return self.text(g.name)
        fty = g.function_type
        return f"declare {fty.return_type} {ref}({', '.join(str(a) for a in fty.args)})"

    def _module_text(self, bodies: list[str], defined: set[str]) -> str:
        decls = []
        for ref in dict.fromkeys(m.group(0) for b in bodies for m in _REF.finditer(b)):
            if ref not in defined and (line := self._declaration(ref)) is not None:
                decls.append(line)
        used = {int(i) for b in bodies for i in _MD.findall(b)}
        mds = [line for line in self.metadata() if int(_MD.match(line).group(1)) in used]
        return "\n".join(decls + bodies + mds) + "\n"

    # --- the rest: entry point and thread pool --------------------------------------------
    def _entry_side(self, kernels: set[str], in_lib: set[str], lib: list[str]) -> tuple[list[str], set[str]]:
        """(the definitions outside every kernel and the library, what they reach without going
        through a kernel or a library function)."""
        inside = set().union(*(self.closure(k) for k in kernels)) if kernels else set()
        defs = [n for n, g in self.globals.items() if _defines(g) and n not in inside and n not in in_lib]
        reach, todo = set(), list(defs)
        while todo:
            n = todo.pop()
            if n in reach or not _defines(self.globals[n]):
                continue
            reach.add(n)
            todo.extend(r for r in self.refs(n) if r not in kernels and r not in lib)
        return defs, reach

    def _library(self, kernels: set[str]) -> tuple[list[str], set[str]]:
        """The library functions and what they reach; none when a kernel shares code with them."""
        lib = [n for n in self.library if n in self.globals and _defines(self.globals[n])]
        in_lib = set().union(*(self.closure(n) for n in lib)) if lib else set()
        inside = set().union(*(self.closure(k) for k in kernels)) if kernels else set()
        if in_lib & inside:
            return [], set()
        return lib, in_lib

    def entry_bound(self, kernels: list[str]) -> frozenset[str]:
        """Of a finished module's ``kernels``, those whose code the entry side reaches too: they
        stay in the entry module (none of convc's kernels do that; it keeps the split safe)."""
        self._sync()
        ks = {k for k in kernels if k in self.globals and _defines(self.globals[k])}
        lib, in_lib = self._library(ks)
        _, reach = self._entry_side(ks, in_lib, lib)
        return frozenset(k for k in ks if self.closure(k) & reach)

    def finish(self) -> tuple[list[SplitModule], bool]:
        """The entry module (and the library's), then the groups that waited, once the module is
        complete; False when a kernel
        split off earlier turns out to share code with the entry side (the caller splits again
        with ``split_module``, which keeps such kernels in the entry module)."""
        self._sync()
        kernels, kept = set(self.kernels), set(self.kept)
        lib, in_lib = self._library(kernels | kept)
        defs, reach = self._entry_side(kernels | kept, in_lib, lib)
        if reach & self.placed:
            return [], False
        entry = set(defs).union(*(self.closure(k) for k in kept))
        if reach & in_lib:  # the entry point uses the library's internals: keep them together
            entry |= in_lib
            lib, in_lib = [], set()
        held, self._held = self._held, []
        groups = [m for root, kernel in held for m in self._group(root, kernel, final=True)]
        rename = {self.globals[k].get_reference(): f'@"{self.content_name(k)}"' for k in kernels}
        names = [n for n in self.globals if n in entry]
        bodies = [_REF.sub(lambda m: rename.get(m.group(0), m.group(0)), self.text(n)) for n in names]
        out = [SplitModule(self._module_text(bodies, {self.globals[n].get_reference() for n in names}),
                           None, len(self.kept), ENTRY_SPEED)]
        if lib:
            names = [n for n in self.globals if n in in_lib]
            text = self._module_text([self.text(n) for n in names], {self.globals[n].get_reference() for n in names})
            out.append(SplitModule(text, hashlib.sha256(text.encode()).hexdigest()))
        return out + groups, True


# the content names as linker globs: a library built from split modules keeps them to itself
CONTENT_NAME_GLOBS = tuple(f"convc_{kind}{'?' * 24}" for kind in "kh")


def merge_splits(parts: list[list[SplitModule]]) -> list[SplitModule]:
    """Several modules' splits as one list to link together (a training library's four entry
    points): a kernel group defined by an earlier split is dropped. Its content name stands for
    the same code whatever group holds it (a helper can be inlined in one split, a group of its
    own in another), so the first definition serves every caller; identical groups go too."""
    out, seen, defined = [], set(), set()
    for split in parts:
        for m in split:
            if m.key is not None and m.key in seen or m.exports and set(m.exports) <= defined:
                continue
            out.append(m)
            seen.add(m.key)
            defined.update(m.exports)
    return out


SHARED_MIN_CHARS = 4000  # a helper this large is not inlined where it has several callers (LLVM's
                         # -O2 threshold is about 45 instructions): it gets a module of its own


def split_module(module: ir.Module, kernels: list[str], library: tuple[str, ...] = ()) -> list[SplitModule]:
    """The entry module's text, then the ``library`` functions' (the thread pool: the same in every
    model, so compiled once and cached, at full speed, apart from the entry point, which LLVM
    barely optimizes), then one text per kernel group (``Splitter``). ``kernels`` are the functions
    the entry point calls or hands to the thread pool (``NativeModule.callees``)."""
    s = Splitter(module, library)
    groups = s.add(list(kernels), s.entry_bound(list(kernels)))
    rest, ok = s.finish()
    assert ok, "entry_bound keeps every kernel the entry side shares code with"
    head = [m for m in rest if not m.exports]
    return head + sorted(groups + [m for m in rest if m.exports], key=lambda m: m.exports)


def _out_of_line(body: str) -> bool:
    """A function LLVM would not inline into several callers: a large one, or one marked noinline
    (a helper written to be shared, like the transpose tiles)."""
    head = body.split("\n", 1)[0]
    return head.startswith("define") and (len(body) >= SHARED_MIN_CHARS or " noinline" in head)
