"""What a compiled artifact holds besides machine code, shared by the compile cache (codegen/cache.py)
and ahead-of-time libraries (codegen/aot.py): the constants blob and the metadata.

The blob holds every constant the code reads (graph constants and weights packed at compile time),
each at a 64-byte aligned offset; a constant-table slot the code never reads has no place in it.
The metadata is the JSON object a loader reads: ABI version, target, inputs and outputs, arena
size, threads, kernel names and the graph's metadata.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from convc.codegen.artifacts import ALIGN

from convc import abi

if TYPE_CHECKING:
    from convc.codegen.target import AotTarget


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


def _io_meta(specs) -> list[dict]:
    return [{"name": s.name, "shape": [int(d) for d in s.shape], "dtype": np.dtype(s.dtype).name} for s in specs]


def metadata(native, target: AotTarget, inputs, outputs, graph_metadata: dict | None = None,
             extra: dict | None = None) -> dict:
    """What a loader needs besides the code: everything the Python loader reads (as JSON)."""
    from convc.version import __version__
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
