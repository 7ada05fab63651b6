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
# bits); the backend still runs at -O3. Scalar loops (elementwise, pooling, concat copies) keep
# -O2, whose loop vectorizer they rely on (DenseNet-121 ran 10% slower with every module at -O0), and
# so do vector kernels with vecmath's polynomials (sigmoid, exp epilogues: EfficientNet-B0's convs
# ran 8% slower without it) and those with stack slots (allocas: a direct conv on 3 channels ran 16%
# slower).
VECTOR_SPEED = 0
VECTOR_SHARE = 0.2  # of a module's instructions on vectors, above which it counts as hand-vectorized
VECTOR_MIN_CHARS = 10_000  # smaller modules (pooling, small elementwise kernels) keep -O2: it costs them
                           # little, and a global average pool ran 15-40% slower without it
_INSTRUCTION = re.compile(r"^  \S.*$", re.M)
_VECTOR = re.compile(r"<\d+ x ")


def kernel_speed(text: str) -> int:
    """The IR pipeline's level for a kernel module: VECTOR_SPEED for hand-vectorized code without
    vecmath, else KERNEL_SPEED. Measured on convc's modules the share is bimodal (below 0.15 or above 0.3)."""
    if len(text) < VECTOR_MIN_CHARS or "llvm.fmuladd." in text or " alloca " in text:
        return KERNEL_SPEED  # small; vecmath's polynomials (@"llvm.fmuladd..."); stack slots SROA removes
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


class _Splitter:
    def __init__(self, module: ir.Module, kernels: list[str]):
        self.module = module
        self.globals = {g.name: g for g in module.global_values}
        self.by_ref = {g.get_reference(): g.name for g in module.global_values}
        self.text = {name: str(g) for name, g in self.globals.items()}
        self.refs = {name: self._references(name) for name in self.globals}
        self.kernels = [k for k in dict.fromkeys(kernels) if k in self.globals and _defines(self.globals[k])]
        self.metadata = [str(m) for m in module.metadata]
        self._content: dict[str, str | None] = {}

    def _references(self, name: str) -> set[str]:
        own = self.globals[name].get_reference()
        out = set()
        for m in _REF.finditer(self.text[name]):
            ref = m.group(0)
            if ref != own and ref in self.by_ref:
                out.add(self.by_ref[ref])
        return out

    def closure(self, name: str) -> set[str]:
        """``name`` and every definition it reaches."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n in seen or not _defines(self.globals[n]):
                continue
            seen.add(n)
            todo.extend(self.refs[n])
        return seen

    def content_name(self, name: str, visiting: frozenset = frozenset()) -> str | None:
        """The Merkle content name of a definition; None inside a cycle (left unsplit)."""
        if name in self._content:
            return self._content[name]
        if name in visiting:
            return None
        g = self.globals[name]
        subst = {}
        for r in self.refs[name]:
            if _defines(self.globals[r]):
                c = self.content_name(r, visiting | {name})
                if c is None:
                    self._content[name] = None
                    return None
                subst[self.globals[r].get_reference()] = f'@"{c}"'
        own = g.get_reference()
        body = _REF.sub(lambda m: "@SELF" if m.group(0) == own else subst.get(m.group(0), m.group(0)), self.text[name])
        if isinstance(g, ir.Function) and name in self.kernels:
            body = body.replace("define internal ", "define ", 1)
        h = hashlib.sha256(body.encode()).hexdigest()[:24]
        c = f"convc_k{h}" if name in self.kernels else f"convc_h{h}"  # see CONTENT_NAME_GLOBS
        self._content[name] = c
        return c


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
    """The entry module's text, then one text per kernel and per large shared helper, and one for
    the ``library`` functions (the thread pool: the same in every model, so compiled once and
    cached, at full speed, apart from the entry point, which LLVM barely optimizes). ``kernels``
    are the functions the entry point calls or hands to the thread pool (``NativeModule.callees``)."""
    s = _Splitter(module, kernels)
    closures = {k: s.closure(k) for k in s.kernels}
    in_kernels = set().union(*closures.values()) if closures else set()
    lib = [n for n in library if n in s.globals and _defines(s.globals[n])]
    in_lib = set().union(*(s.closure(n) for n in lib)) if lib else set()
    if in_lib & in_kernels:
        lib, in_lib = [], set()
    entry_defs = [n for n, g in s.globals.items() if _defines(g) and n not in in_kernels and n not in in_lib]
    # what the entry side reaches without going through a kernel or a library function
    entry_reach, todo = set(), list(entry_defs)
    while todo:
        n = todo.pop()
        if n in entry_reach or not _defines(s.globals[n]):
            continue
        entry_reach.add(n)
        todo.extend(r for r in s.refs[n] if r not in closures and r not in lib)
    if entry_reach & in_lib:  # the entry point uses the library's internals: keep them together
        entry_defs += [n for n in s.globals if n in in_lib]
        lib, in_lib = [], set()

    def splittable(k: str) -> bool:
        for n in closures[k]:
            g = s.globals[n]
            if n in entry_reach or (isinstance(g, ir.GlobalVariable) and not g.global_constant):
                return False
        return s.content_name(k) is not None

    split = [k for k in s.kernels if splittable(k)]
    entry_keep = set(entry_defs).union(*(closures[k] for k in s.kernels if k not in split))
    moved = set().union(*(closures[k] for k in split)) - entry_keep
    # from here on, definitions by content name: identical kernels and helpers are one
    name_of = {s.content_name(n): n for n in moved}
    rename = {s.globals[n].get_reference(): f'@"{s.content_name(n)}"' for n in moved}

    def renamed(text: str) -> str:
        return _REF.sub(lambda m: rename.get(m.group(0), m.group(0)), text)
    body = {c: renamed(s.text[n]) for c, n in name_of.items()}
    refs = {c: {s.content_name(r) for r in s.refs[n] if r in moved} for c, n in name_of.items()}
    roots = _roots({s.content_name(k) for k in split}, refs, body)

    def declaration(ref: str) -> str | None:
        """The declare line of a function defined in another module (or outside convc's code)."""
        c = ref[2:-1] if ref.startswith('@"') else None
        g = s.globals[name_of[c]] if c in name_of else s.globals.get(s.by_ref.get(ref, ""))
        if not isinstance(g, ir.Function):
            return None
        if not g.blocks:
            return s.text[g.name]
        fty = g.function_type
        return f"declare {fty.return_type} {ref}({', '.join(str(a) for a in fty.args)})"

    def module_text(bodies: list[str], defined: set[str]) -> str:
        decls = []
        for ref in dict.fromkeys(m.group(0) for b in bodies for m in _REF.finditer(b)):
            if ref not in defined and (line := declaration(ref)) is not None:
                decls.append(line)
        used = {int(i) for b in bodies for i in _MD.findall(b)}
        mds = [line for line in s.metadata if int(_MD.match(line).group(1)) in used]
        return "\n".join(decls + bodies + mds) + "\n"

    entry_names = [n for n in s.globals if n in entry_keep]
    out = [SplitModule(module_text([renamed(s.text[n]) for n in entry_names],
                                   {s.globals[n].get_reference() for n in entry_names}),
                       None, sum(1 for k in s.kernels if k not in split), ENTRY_SPEED)]
    if lib:
        names = [n for n in s.globals if n in in_lib]
        text = module_text([s.text[n] for n in names], {s.globals[n].get_reference() for n in names})
        out.append(SplitModule(text, hashlib.sha256(text.encode()).hexdigest()))
    for root in sorted(roots):
        members, todo = set(), [root]
        while todo:
            c = todo.pop()
            if c in members or (c in roots and c != root):
                continue
            members.add(c)
            todo.extend(refs[c])
        ordered = sorted(members)
        bodies = [body[c].replace("define internal ", "define ", 1) if c == root else body[c] for c in ordered]
        text = module_text(bodies, {f'@"{c}"' for c in ordered})
        out.append(SplitModule(text, hashlib.sha256(text.encode()).hexdigest(), int(root.startswith("convc_k")),
                               kernel_speed(text), exports=(root,)))
    return out


def _out_of_line(body: str) -> bool:
    """A function LLVM would not inline into several callers: a large one, or one marked noinline
    (a helper written to be shared, like the transpose tiles)."""
    head = body.split("\n", 1)[0]
    return head.startswith("define") and (len(body) >= SHARED_MIN_CHARS or " noinline" in head)


def _roots(kernels: set[str], refs: dict[str, set[str]], body: dict[str, str]) -> set[str]:
    """The definitions that get a module of their own: the kernels, and every function out of line
    (large or noinline) that two of those modules would otherwise each compile (a shared GEMM
    micro-kernel). A helper with one user stays in that user's module, where LLVM inlines it as it
    did in one module; a small shared helper is copied into each user (inlined there too)."""
    roots = set(kernels)
    while True:
        users: dict[str, int] = {}
        for r in roots:
            seen, todo = set(), list(refs[r])
            while todo:
                c = todo.pop()
                if c in seen or c in roots:
                    continue
                seen.add(c)
                todo.extend(refs[c])
            for c in seen:
                users[c] = users.get(c, 0) + 1
        new = {c for c, n in users.items() if n > 1 and _out_of_line(body[c])}
        if not new:
            return roots
        roots |= new
