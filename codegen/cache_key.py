"""The compile cache's keys: what names a compiled model's entry (codegen/entry.py).

The key is a SHA-256 over the optimized graph (the pipeline variant, op kinds, attributes, shapes,
layouts, every constant's bytes through its own SHA-256, the schedule and memory plan), the options
(threads, instrumentation), the CPU name and feature string, the llvmlite, LLVM, numpy and convc
versions, and a fingerprint of the compiler's own source files (an edited kernel emitter must not be
served stale code). Hashing the optimized graph needs the import and the passes (about 2 s for
ResNet-50), so ``convc.compile`` of a file, bytes or ModelProto also records a *source alias*
``v2/src-<hash>``: a hash of the model's bytes plus the same options, naming the entry; a warm
compile then skips the import and passes too, and ``CompiledModel.graph`` is rebuilt only if someone
reads it. Training plans (the step, the eval forward on the training state) use the same key: their
parameters are inputs without data, so a model trained from other initial weights reuses the entry.

Light like codegen/entry.py (a warm ``convc.compile`` hashes its source here): no code generator.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import llvmlite
import llvmlite.binding as llvm
import numpy as np
from convc.codegen.artifacts import digest
from convc.codegen.entry import FORMAT
from convc.codegen.jit import Target

from convc.abi import ABI_VERSION
from convc.model_file import ModelBytes
from convc.parallel import side_by_side
from convc.version import __version__


# --- keys --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the compiler's Python sources (the packages convc, codegen, passes, frontend)."""
    h = digest()
    for pkg in ("convc", "convc.codegen", "convc.passes", "convc.frontend"):
        spec = importlib.util.find_spec(pkg)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(root).rglob("*.py")):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def environment(threads: int, instrument: bool = False) -> dict:
    """Everything besides the model that changes the machine code."""
    host = Target.host()
    return {"format": FORMAT, "abi": ABI_VERSION, "triple": host.triple, "cpu": host.cpu, "features": host.features,
            "llvmlite": llvmlite.__version__, "llvm": list(llvm.llvm_version_info), "numpy": np.__version__,
            "convc": __version__, "code": code_fingerprint(), "threads": int(threads), "instrument": bool(instrument)}


def _feed(h, obj: Any) -> None:
    """Hash a value canonically (dataclasses, enums, arrays, containers, scalars)."""
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"nd{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"dc{type(obj).__qualname__}(".encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode() + b"=")
            _feed(h, getattr(obj, f.name))
        h.update(b")")
    elif isinstance(obj, enum.Enum):
        h.update(f"en{type(obj).__qualname__}.{obj.name}".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}[".encode())
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}{{".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    else:  # str, int, float (repr is exact), bool, None, np scalars, dtypes
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def graph_key(plan, env: dict) -> str:
    """SHA-256 of the optimized graph, its schedule and memory plan, and ``env``."""
    h = digest(json.dumps(env, sort_keys=True).encode())
    g = plan.graph
    _feed(h, plan.variant.name)  # a training variant's code reads its weights at run time
    _feed(h, (g.name, list(g.inputs), list(g.outputs)))
    _feed(h, {k: v for k, v in g.metadata.items() if isinstance(v, (str, int, float, bool, list, tuple, dict))})
    for op in plan.order:
        _feed(h, (op.name, op.kind, op.attrs, tuple(op.inputs), tuple(op.outputs)))
    tensors = sorted(g.tensors(), key=lambda t: t.name)
    digests = iter(_array_digests([np.asarray(t.data) for t in tensors if t.data is not None]))
    for t in tensors:
        _feed(h, (t.name, t.shape, t.dtype.str, t.kind, t.layout))
        if t.data is not None:
            h.update(next(digests))
    m = plan.memory
    _feed(h, (m.arena_bytes, list(m.constants), sorted((k, v.kind, v.index) for k, v in m.buffers.items())))
    return h.hexdigest()


PARALLEL_HASH_BYTES = 8 << 20  # constants of a plan this large are hashed on two threads


def _array_digests(arrays: list[np.ndarray]) -> list[bytes]:
    """Per array, SHA-256 of its dtype, shape and bytes. A large model's are hashed on two threads
    (hashlib releases the GIL; the calling thread hashes its share, so no thread waits for the GIL
    behind running Python): ResNet-50's 100 MB of weights took 0.07 s on one core, between the
    passes and code generation, with the other cores idle."""
    out: list[bytes | None] = [None] * len(arrays)

    def hash_some(indices: list[int]) -> None:
        for i in indices:
            a = np.ascontiguousarray(arrays[i])
            h = digest(f"nd{a.dtype.str}{a.shape}".encode())
            if a.size:
                h.update(memoryview(a).cast("B"))
            out[i] = h.digest()
    if sum(a.nbytes for a in arrays) < PARALLEL_HASH_BYTES:
        hash_some(list(range(len(arrays))))
        return out  # type: ignore[return-value]
    shares: tuple[list[int], list[int]] = ([], [])
    load = [0, 0]
    for i in sorted(range(len(arrays)), key=lambda i: -arrays[i].nbytes):  # the larger first, to the lighter share
        k = int(load[1] < load[0])
        shares[k].append(i)
        load[k] += arrays[i].nbytes
    side_by_side(lambda: hash_some(shares[0]), lambda: hash_some(shares[1]), "convc-plan-hash")
    return out  # type: ignore[return-value]


def source_key(model: Any, batch: int | None, input_shape: Any, env: dict) -> str | None:
    """A hash of the model as given (an ONNX file, bytes or ModelProto) and the options, or None
    when the source cannot be hashed cheaply and reliably (a Graph, a Module, an unreadable file).

    The bytes do not cover tensors kept in external data files: the caller names an entry by this
    key only for a model it has parsed and found without any (convc/driver.py). A look-up by it may
    come first (a warm compile parses nothing): the same bytes are the same model, so the key of a
    model with external tensors names no entry."""
    if isinstance(model, ModelBytes):  # a file as read: its bytes' digest (hashed while it was read)
        data = model.digest()
    elif isinstance(model, (str, os.PathLike)):
        try:
            data = Path(model).read_bytes()
        except OSError:
            return None
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = model if isinstance(model, (bytes, bytearray)) else bytes(model)
    elif type(model).__name__ == "ModelProto":
        data = model.SerializeToString()
    else:
        return None
    if not isinstance(model, ModelBytes):
        data = digest(data).digest()
    h = digest(json.dumps(env, sort_keys=True).encode())
    _feed(h, ("source", batch, repr(input_shape)))
    h.update(data)  # the model's SHA-256: the same for its file, its bytes and its ModelProto
    return h.hexdigest()
