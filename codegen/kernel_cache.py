"""The kernel-level object cache: one object file per kernel group, shared by every model.

codegen/split.py cuts a model's code into modules written only in content names, so a module's
text is the same in every model that has those kernels. Its object file is stored under
``<cache dir>/kernels/<key>.o``, the key a SHA-256 of that text, the target (triple, CPU, features),
the LLVM and llvmlite versions and the optimization level: the text determines the code, so no
fingerprint of convc's sources is needed, and a convc edit that changes a kernel changes its text.
A new model compiles only the groups no model compiled before (ResNet-101 after ResNet-50).

Each file starts with the SHA-256 of the object after it: a damaged file is removed and compiled
again. Files are written atomically (``atomic_write``) and their modification time is refreshed on
use, so the cache's size limit evicts the least recently used first. The directory is created
private (0700) and checked like the whole-model entries' (``check_dir``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from convc.codegen.artifacts import atomic_write, private_dir

FORMAT = 1
FOLDER = "kernels"


def folder(root: Path) -> Path:
    return root / FOLDER


def key(text_key: str, triple: str, cpu: str, features: str, speed: int) -> str:
    h = hashlib.sha256()
    for part in (f"kernel-object-v{FORMAT}", text_key, triple, cpu, features, llvmlite.__version__,
                 ".".join(map(str, llvm.llvm_version_info)), str(speed)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(root: Path, k: str) -> Path:
    return folder(root) / f"{k}.o"


def has(root: Path, k: str) -> bool:
    """Whether an object file for key ``k`` is stored (``load`` still checks it)."""
    return _path(root, k).exists()


def load(root: Path, k: str) -> bytes | None:
    """The cached object file for key ``k``, or None (missing or damaged: then removed)."""
    path = _path(root, k)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    sha, obj = data[:32], data[32:]
    if len(data) <= 32 or hashlib.sha256(obj).digest() != sha:
        try:
            path.unlink()
        except OSError:
            pass
        return None
    try:
        os.utime(path)  # last use, for least-recently-used eviction
    except OSError:
        pass
    return obj


def store(root: Path, k: str, obj: bytes) -> None:
    """Write one object file (OSError or ArtifactError when the directory is unusable)."""
    d = private_dir(folder(root), root=root)
    atomic_write(d / f"{k}.o", hashlib.sha256(obj).digest() + obj)


def files(root: Path) -> list[Path]:
    d = folder(root)
    try:
        return [p for p in d.iterdir() if p.suffix == ".o"]
    except OSError:
        return []

