"""The compile cache's size: what it holds, a limit, and least-recently-used eviction.

Every file of the cache counts: compiled models (``v2/<key>.entry``), their source aliases and the
shared kernel objects (``kernels/``). A compile that stores an entry prunes the cache down to
``CONVC_CACHE_MAX_BYTES`` (default 4 GB), oldest use first, always keeping the model it just
stored; ``convc cache --list/--prune/--clear`` read and act through the same functions.
"""
from __future__ import annotations

import json
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from convc.codegen import kernel_cache
from convc.codegen.artifacts import CacheWarning
from convc.codegen.entry import _HEADER, FORMAT, HEADER_BYTES, MAGIC, _entries, wait_for_stores


def clear(root: Path) -> int:
    """Remove every entry (of this format and older ones) and every cached kernel object; returns
    the bytes freed."""
    wait_for_stores()
    freed = 0
    for folder in [root / f"v{n}" for n in range(1, FORMAT + 1)] + [kernel_cache.folder(root)]:
        if folder.is_dir():
            for p in folder.iterdir():
                try:
                    freed += p.stat().st_size
                    p.unlink()
                except OSError:
                    pass
            if folder != _entries(root):
                try:
                    folder.rmdir()
                except OSError:
                    pass
    return freed


def usage(root: Path) -> tuple[int, int]:
    """(number of compiled models, total bytes of the cache: models, their aliases, kernel objects)."""
    items = cached_files(root)
    return sum(1 for i in items if i.kind == "model"), sum(i.size for i in items)


DEFAULT_MAX_BYTES = 4_000_000_000
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?)B?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "4000000000", "500M", "4G", "4GB" (powers of 1000, as convc prints sizes) or
    "4GiB" (powers of 1024); ValueError otherwise."""
    m = _SIZE.fullmatch(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or with K, M, G or T: 4G, 500M)")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def max_bytes() -> int:
    """The cache's size limit: ``CONVC_CACHE_MAX_BYTES`` (4G, 500M, bytes), default 4 GB."""
    value = os.environ.get("CONVC_CACHE_MAX_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(value)
    except ValueError as e:
        warnings.warn(f"CONVC_CACHE_MAX_BYTES: {e}; using {DEFAULT_MAX_BYTES / 1e9:g} GB", CacheWarning, stacklevel=2)
        return DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class CachedFile:
    """One file of the cache: a compiled model ("model", with its name, inputs and creation time
    from its JSON), a source alias ("alias") or a kernel object ("kernel")."""
    kind: str
    path: Path
    size: int
    last_use: float  # the file's modification time: refreshed by every hit
    name: str = ""
    inputs: str = ""
    created: float | None = None


def _describe(path: Path) -> tuple[str, str, float | None]:
    """(model name, input shapes, creation time) from an entry's JSON, without checking the entry."""
    try:
        with open(path, "rb") as f:
            magic, n_meta, *_ = _HEADER.unpack(f.read(HEADER_BYTES)[:_HEADER.size])
            if magic != MAGIC or n_meta > 1 << 24:
                return "?", "", None
            meta = json.loads(f.read(n_meta))
        inputs = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in meta.get("inputs", []))
        return str(meta.get("name", "?")), inputs, (meta.get("cache") or {}).get("created")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return "?", "", None


def cached_files(root: Path, describe: bool = False) -> list[CachedFile]:
    """Every file of the cache, least recently used first (``describe``: read the models' names)."""
    out = []
    for folder, kind_of in ((_entries(root), lambda p: "model" if p.suffix == ".entry" else "alias"),
                            (kernel_cache.folder(root), lambda p: "kernel")):
        try:
            paths = list(folder.iterdir())
        except OSError:
            continue
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue  # removed meanwhile
            kind = kind_of(p)
            extra = _describe(p) if describe and kind == "model" else ("", "", None)
            out.append(CachedFile(kind, p, st.st_size, st.st_mtime, *extra))
    return sorted(out, key=lambda i: i.last_use)


def prune(root: Path, limit: int | None = None) -> tuple[int, int]:
    """Remove the least recently used models and kernel objects until the cache holds at most
    ``limit`` bytes (default ``max_bytes()``), and aliases whose model is gone; returns (files
    removed, bytes freed). A model that runs again after its entry went is compiled again."""
    limit = max_bytes() if limit is None else limit
    items = cached_files(root)
    total = sum(i.size for i in items)
    newest = next((i for i in reversed(items) if i.kind == "model"), None)  # the model just compiled stays
    removed = freed = 0
    for item in items:
        if total <= limit:
            break
        if item.kind == "alias" or item is newest:
            continue
        try:
            item.path.unlink()
        except OSError:
            continue
        total -= item.size
        removed, freed = removed + 1, freed + item.size
    folder = _entries(root)
    for item in items:
        if item.kind == "alias" and item.path.exists():
            try:
                target = folder / f"{item.path.read_text().strip()}.entry"
                if not target.exists():
                    item.path.unlink()
                    removed, freed = removed + 1, freed + item.size
            except (OSError, UnicodeDecodeError):
                pass
    return removed, freed
