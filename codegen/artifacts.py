"""Files convc writes and later runs as code: their integrity, where they live, what names go into them.

Compiled artifacts (``convc compile`` libraries, compile cache entries, pickled models) are code:
trusted like any library, but damage must be detected and reported before anything runs, never a
crash where a check can prevent it. This module is the one place for

- the digest (SHA-256) every artifact carries: ``digest``, ``HashingWriter``;
- the integrity trailer of a shared library (``sign_library`` / ``verify_library``): 64 bytes
  appended after the linked ELF file, holding the SHA-256 of everything before it. It is read by
  Python before ``dlopen`` (a truncated library faults inside dlopen, flipped code bytes raise
  SIGILL), and the dynamic loader and linkers ignore bytes past the ELF sections;
- writing files atomically (``atomic_write``) and reading them into private memory
  (``read_aligned``: a file that is truncated later cannot fault code that maps it);
- directories code is read from (``private_dir``, ``check_dir``): owned by this user (or root) and
  writable by nobody else, so nobody can plant a library or a cache entry in them;
- names written into generated source: ``c_escape`` / ``c_string`` (C comments and string
  literals), ``c_identifier``, ``llvm_name`` (LLVM module names), ``file_name``.

Nothing here imports llvmlite: ``convc.load`` uses it with numpy alone.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ALIGN = 64


class ArtifactError(Exception):
    """An artifact or a directory failed a check; the message says what (callers add the path and
    raise their own ConvcError or warning)."""


class CacheWarning(UserWarning):
    """A cache entry or a cache directory was unusable (damaged, another model's, unsafe); convc went on without it."""


# --- digests -----------------------------------------------------------------------------------

def digest(data: Any = b"") -> "hashlib._Hash":
    """The hash every convc artifact uses (SHA-256), fed with ``data``."""
    return hashlib.sha256(data)


class HashingWriter:
    """Writes to a binary file and hashes what it writes."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = digest()

    def write(self, data) -> None:
        self.h.update(data)
        self.f.write(data)


def file_digest(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """SHA-256 of a file's first ``limit`` bytes (all of it by default), read in chunks."""
    h = digest()
    with open(path, "rb") as f:
        left = limit
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.digest()


# --- files -------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, data: bytes | Callable[[Any], None]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file) to a temporary file beside
    ``path`` and rename it over ``path``: readers never see half a file, concurrent writers all succeed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialized uint8 array of ``nbytes`` starting on a 64-byte boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes]


def read_aligned(path: str | os.PathLike) -> np.ndarray:
    """A whole file read into private 64-byte aligned memory (read, not mapped: truncating the file
    later cannot fault whoever uses it, and what was checked is what runs)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = aligned_empty(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if got != size:
        raise ArtifactError(f"it changed while being read ({got} of {size} bytes)")
    return buf


# --- the library trailer -----------------------------------------------------------------------

TRAILER_MAGIC = b"CONVCSIG"
TRAILER_VERSION = 1
# sha256 of the bytes before the trailer, their length, trailer version, C ABI version, reserved, magic
_TRAILER = struct.Struct("<32sQII8s8s")
TRAILER_BYTES = _TRAILER.size  # 64


def sign_library(path: str | os.PathLike, abi: int) -> None:
    """Append the integrity trailer to a linked library (in place: call it on the temporary file
    before renaming it into place)."""
    size = os.path.getsize(path)
    sha = file_digest(path)
    with open(path, "ab") as f:
        f.write(_TRAILER.pack(sha, size, TRAILER_VERSION, int(abi), b"\0" * 8, TRAILER_MAGIC))


def verify_library(path: str | os.PathLike) -> tuple[bytes, int]:
    """Check a library's trailer and digest without loading it; returns (digest, ABI version) or
    raises ArtifactError saying what is wrong."""
    size = os.path.getsize(path)
    unsigned = ("has no convc integrity trailer: it is damaged (truncated?), was modified after `convc compile` "
                "(strip, patchelf), was linked by hand from the object file, or is not a convc library. "
                "Rebuild it with `convc compile -o LIBRARY.so`")
    if size < TRAILER_BYTES:
        raise ArtifactError(f"{unsigned} ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(size - TRAILER_BYTES)
        sha, body, version, abi, _, magic = _TRAILER.unpack(f.read(TRAILER_BYTES))
    if magic != TRAILER_MAGIC:
        raise ArtifactError(unsigned)
    if version != TRAILER_VERSION:
        raise ArtifactError(f"has an integrity trailer of version {version} (this convc reads {TRAILER_VERSION}); "
                            "rebuild it with this convc")
    if body != size - TRAILER_BYTES:
        raise ArtifactError(f"is truncated or was extended: {size} bytes where its trailer records "
                            f"{body + TRAILER_BYTES}; rebuild it")
    if file_digest(path, body) != sha:
        raise ArtifactError("is damaged: its SHA-256 does not match the one recorded when it was built "
                            "(flipped or overwritten bytes in its code, weights or metadata); rebuild it")
    return sha, abi


# --- directories -------------------------------------------------------------------------------

def check_dir(path: str | os.PathLike, *, sticky_ok: bool = False) -> None:
    """Raise ArtifactError unless ``path`` is a directory owned by this user (or root) that no other
    user can write to. ``sticky_ok`` also accepts a group/world-writable directory with the sticky
    bit (like /tmp): others can add files but not rename or remove ours, so it may hold our
    private directories, not our files."""
    path = Path(path)
    me = os.geteuid()
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        raise ArtifactError(f"{path} is a symbolic link owned by another user (uid {link.st_uid})")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactError(f"{path} is not a directory")
    if st.st_uid not in (me, 0):
        raise ArtifactError(f"{path} is owned by another user (uid {st.st_uid}, this process runs as uid {me}): "
                            "code in it could have been planted by them")
    shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
        raise ArtifactError(f"{path} can be written by {who} (mode {stat.S_IMODE(st.st_mode):04o}): code in it "
                            f"could have been planted by another user; `chmod go-w {path}` once you trust its "
                            "contents, or remove it")


def private_dir(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """Create ``path`` (mode 0700, and ``root`` above it first) unless it exists, and check both with
    ``check_dir`` (``root`` may be a sticky shared directory); returns ``path``."""
    path = Path(path)
    if root is not None:
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_dir(root, sticky_ok=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path)
    return path


# --- names in generated source -----------------------------------------------------------------

_C_PLAIN = set(b" !#$%&'()+,-./0123456789:;<=>@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~")


def c_escape(text: str) -> str:
    """``text`` escaped for the inside of a C string literal, and harmless inside a /* */ comment:
    printable ASCII except \\ " ? * stays as it is (so ``*/``, ``/*`` and trigraphs cannot form),
    every other byte of its UTF-8 encoding becomes a three-digit octal escape."""
    out = []
    for c in str(text).encode("utf-8", "surrogatepass"):
        if c in _C_PLAIN:
            out.append(chr(c))
        elif c in (0x22, 0x5C, 0x3F):  # " \ ?
            out.append("\\" + chr(c))
        else:
            out.append(f"\\{c:03o}")
    return "".join(out)


def c_string(text: str) -> str:
    """``text`` as a C string literal (also how names are shown in the header's comments)."""
    return f'"{c_escape(text)}"'


def c_identifier(text: str) -> str:
    """An ASCII C identifier made from ``text`` (other characters become underscores)."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", str(text))
    return out if out and not out[0].isdigit() else "_" + out


def llvm_name(text: str) -> str:
    """A name safe in LLVM IR text where llvmlite does not quote it (the module's ``; ModuleID``
    line): printable ASCII without quotes or backslashes."""
    return re.sub(r'[^ -~]|["\\]', "_", str(text))[:200] or "model"


def file_name(text: str, default: str = "model") -> str:
    """A plain file name (no directories, no leading dot) made from ``text``."""
    out = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(str(text)).name).lstrip(".")[:120]
    return out or default
