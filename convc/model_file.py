"""An ONNX model file read without the onnx package or the frontend: a warm compile hashes its bytes
to find its cache entry and imports neither (about 1 s); a cold one parses the same bytes
(frontend/onnx/reader.py).

The weights are found in the bytes without protobuf. Parsing a ModelProto copies every byte of it,
the weights included, and reading a tensor's ``raw_data`` copies its bytes again: two copies of
100 MB for ResNet-50 before a weight is in a numpy array. ``split_weights`` walks the protobuf wire
format of the top-level graph (the structure only: one step per field, never per byte of data)
and returns the model's bytes without its initializers' ``raw_data``, to parse, and where each
initializer's ``raw_data`` lies. ``read_model_bytes`` does the same walk on a file, reading its
structure in pages and each initializer's raw data straight into an array of its own, which
becomes the weight: every byte of the file is read once, into where it stays.

Anything the walk does not expect (a group, a wire type no protobuf writes, a length past the end)
makes it give up: the caller parses the bytes as they are, and protobuf says what is wrong. Fields
are kept in their order, and a field that occurs twice is kept twice, so protobuf merges the
stripped bytes exactly as it would have merged the original; of several ``raw_data`` fields of
one tensor the last counts, as in protobuf.
"""
from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convc.errors import ModelImportError

PROTOBUF_LIMIT = 2**31  # bytes: no serialized protobuf message can be this large
# read whole and split in memory below this size: the walk by pages costs about 40 us of Python per
# tensor and saves a copy of its bytes (0.6-0.9 ms per MB), a gain for ResNet-50 (100 MB, 267
# tensors), none for DenseNet-121 (32 MB, 606 tensors: 25 ms more to read and hash it)
SMALL_FILE = 32 << 20


def read_file(path: Path) -> bytes:
    """The bytes of an ONNX file; ModelImportError naming it when it is missing, not a regular file
    (a FIFO would block), over protobuf's size limit (not read) or unreadable."""
    _checked_stat(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelImportError(f"cannot read ONNX model {path}: {e.strerror or e}") from None


@dataclass
class ModelBytes:
    """A model file as read. ``pieces`` are its bytes in order, each read once: what the compile
    cache hashes, and ``whole()`` joins. When the walk took it: ``stripped``, its bytes without the
    top-level initializers' raw data, and ``raw``, per initializer in protobuf's order its raw data
    (an array of its own when read by pages, else a view of the bytes read whole) or None."""

    pieces: list[Any]
    stripped: bytes | None = None
    raw: list[np.ndarray | memoryview | None] | None = None
    hasher: _Hasher | None = field(default=None, repr=False)  # hashing ``pieces`` while they were read

    def whole(self) -> bytes:
        return self.pieces[0] if len(self.pieces) == 1 and isinstance(self.pieces[0], bytes) else \
            b"".join(bytes(p) for p in self.pieces)

    def digest(self) -> bytes:
        """SHA-256 of the file's bytes (of ``whole()``), computed once."""
        if self.hasher is None:
            self.hasher = _Hasher(threaded=False)
            for p in self.pieces:
                self.hasher.add(p)
        return self.hasher.digest()


class _Hasher:
    """SHA-256 of byte pieces in order. ``threaded``: on a thread of its own, which hashes each
    piece while the caller reads the next one (hashlib and the reads release the GIL): ResNet-50's
    100 MB took 0.07 s to read and 0.07 s more to hash after it. The thread ends once it has hashed
    the pieces given before ``end()``, whether or not anyone asks for the digest."""

    def __init__(self, threaded: bool = True) -> None:
        self._h = hashlib.sha256()
        self._digest: bytes | None = None
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        if threaded:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(self._queue,), name="convc-model-hash",
                                            daemon=True)
            self._thread.start()

    def _run(self, pieces: queue.SimpleQueue) -> None:
        try:
            while (piece := pieces.get()) is not None:
                self._h.update(piece)
        except BaseException as e:  # noqa: BLE001  raised by digest(): a partial hash must not name an entry
            self._failed = e

    def add(self, piece: Any) -> None:
        if self._queue is None:
            self._h.update(piece)
        else:
            self._queue.put(piece)

    def end(self) -> None:
        """No more pieces."""
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None

    def digest(self) -> bytes:
        if self._digest is None:
            self.end()
            if self._thread is not None:
                self._thread.join()
            if self._failed is not None:
                raise self._failed
            self._digest = self._h.digest()
        return self._digest


def read_model_bytes(path: Path) -> ModelBytes:
    """The model file at ``path`` (refused as ``read_file`` refuses), its weights split off when the
    walk takes the file (see the module docstring); a small file is read whole and split in memory."""
    st = _checked_stat(path)
    if st.st_size < SMALL_FILE:
        return model_bytes(read_file(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ModelImportError(f"cannot read ONNX model {path}: {e.strerror or e}") from None
    try:
        return _read_split(fd, os.fstat(fd).st_size, path)
    except OSError as e:
        raise ModelImportError(f"cannot read ONNX model {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def model_bytes(data: bytes) -> ModelBytes:
    """``data`` (a model's bytes) split in memory: its weights are views of ``data``."""
    split = split_weights(data)
    if split is None:
        return ModelBytes([data])
    view = memoryview(data)
    return ModelBytes([data], split[0], [None if s is None else view[s[0]:s[1]] for s in split[1]])


def _read_split(fd: int, size: int, path: Path) -> ModelBytes:
    """The walk by pages of the file open as ``fd``, then each raw data read into its array."""
    pages = _Pages(fd, size)
    spans: list[tuple[int, int] | None] = []
    try:
        stripped = b"".join(_rewrite(pages, 0, size, MODEL_GRAPH, lambda s, e: _graph(pages, s, e, spans)))
    except _NotPlain:  # (or the file changed size): read as it is now
        return ModelBytes([read_file(path)])
    raw: list[np.ndarray | None] = []
    pieces: list[Any] = []
    hasher = _Hasher()
    try:
        at = 0
        for span in spans:
            if span is None:
                raw.append(None)
                continue
            start, end = span
            pieces.append(pages[at:start])
            hasher.add(pieces[-1])
            array = np.empty(end - start, np.uint8)
            _read_into(fd, array, start, path)
            raw.append(array)
            pieces.append(array)
            hasher.add(array)
            at = end
        pieces.append(pages[at:size])
        hasher.add(pieces[-1])
    finally:
        hasher.end()
    return ModelBytes(pieces, stripped, raw, hasher)


class _Pages:
    """data[a:b] of a file, read in pages the first time and kept: every byte the walk and the hash
    see was read once (a file written meanwhile cannot show them two versions)."""

    SIZE = 1 << 12

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pages = fd, size, {}

    def _load(self, first: int, last: int) -> None:
        """Pages first..last-1 (none read yet), in one read."""
        start = first * self.SIZE
        n = min(last * self.SIZE, self.size) - start
        data = os.pread(self.fd, n, start)
        if len(data) != n:  # the file shrank since its size was read
            raise _NotPlain
        for i in range(first, last):
            self.pages[i] = data[(i - first) * self.SIZE:(i - first + 1) * self.SIZE]

    def __getitem__(self, key: slice) -> bytes:
        a, b = key.start, min(key.stop, self.size)
        if a >= b:
            return b""
        first, last = a // self.SIZE, (b - 1) // self.SIZE + 1
        i = first
        while i < last:  # each run of pages not read yet, in one read
            if i in self.pages:
                i += 1
                continue
            j = i + 1
            while j < last and j not in self.pages:
                j += 1
            self._load(i, j)
            i = j
        if last - first == 1:
            return self.pages[first][a - first * self.SIZE:b - first * self.SIZE]
        parts = [self.pages[i] for i in range(first, last)]
        parts[0] = parts[0][a - first * self.SIZE:]
        parts[-1] = parts[-1][:b - (last - 1) * self.SIZE]
        return b"".join(parts)


def _read_into(fd: int, array: np.ndarray, offset: int, path: Path) -> None:
    view, done = memoryview(array), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise ModelImportError(f"cannot read ONNX model {path}: it was cut short while reading")
        done += n


def _checked_stat(path: Path) -> os.stat_result:
    where = f"cannot read ONNX model {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelImportError(f"{where}: no such file") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name
        raise ModelImportError(f"{where}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelImportError(f"{where}: it is a directory, expected an .onnx file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise ModelImportError(f"{where}: not a regular file")
    if st.st_size >= PROTOBUF_LIMIT:  # protobuf cannot parse it: do not read it all first
        raise ModelImportError(f"{where}: {st.st_size} bytes, over protobuf's 2 GiB limit (models this large keep "
                               "their weights in external data files)")
    return st


# --- the wire format ---------------------------------------------------------------------------
MODEL_GRAPH = 7          # ModelProto.graph
GRAPH_INITIALIZER = 5    # GraphProto.initializer (repeated TensorProto)
TENSOR_RAW_DATA = 9      # TensorProto.raw_data
LEN = 2                  # the wire type of strings, bytes and messages


class _NotPlain(Exception):
    pass


def split_weights(data: Any) -> tuple[bytes, list[tuple[int, int] | None]] | None:
    """(``data`` without its top-level initializers' raw_data, per initializer in file order the
    (start, end) of its raw_data in ``data`` or None), or None when ``data`` is not plain protobuf
    (the caller then parses ``data`` itself). Initializers are numbered as protobuf numbers them:
    in the order they occur, over every occurrence of the graph field."""
    spans: list[tuple[int, int] | None] = []
    try:
        out = _rewrite(data, 0, len(data), MODEL_GRAPH, lambda s, e: _graph(data, s, e, spans))
    except _NotPlain:
        return None
    return b"".join(out), spans


def _graph(data: bytes, start: int, end: int, spans: list) -> list[bytes]:
    return _rewrite(data, start, end, GRAPH_INITIALIZER, lambda s, e: _tensor(data, s, e, spans))


def _tensor(data: bytes, start: int, end: int, spans: list) -> list[bytes]:
    out, raw = [], None
    for number, wire, tag, _, value, after in _fields(data, start, end):
        if number == TENSOR_RAW_DATA and wire == LEN:
            raw = (value, after)
        else:
            out.append(data[tag:after])
    spans.append(raw)
    return out


def _rewrite(data: bytes, start: int, end: int, number: int, inner) -> list[bytes]:
    """The fields of the message in data[start:end], those numbered ``number`` (a message) replaced
    by ``inner``'s pieces under a new length; the others copied as they are, in runs."""
    out: list[bytes] = []
    run = start  # the start of the fields copied as they are, not yet in out
    for n, wire, tag, key_end, value, after in _fields(data, start, end):
        if n != number or wire != LEN:
            continue
        out.append(data[run:tag])
        pieces = inner(value, after)
        out += [data[tag:key_end], _varint_bytes(sum(map(len, pieces)))]
        out += pieces
        run = after
    out.append(data[run:end])
    return out


def _fields(data: bytes, pos: int, end: int):
    """(number, wire type, tag start, tag end, value start, end) of each field in data[pos:end]."""
    while pos < end:
        tag = pos
        key, pos = _varint(data, pos, end)
        wire = key & 7
        key_end = value = pos
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == LEN:
            length, value = _varint(data, pos, end)
            pos = value + length
        elif wire == 5:
            pos += 4
        else:  # groups (3, 4) and the numbers no protobuf writes
            raise _NotPlain
        if pos > end or key >> 3 == 0:
            raise _NotPlain
        yield key >> 3, wire, tag, key_end, value, pos


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    chunk = data[pos:min(pos + 10, end)]  # a varint has at most 10 bytes: one read of the data
    result = shift = 0
    for i, byte in enumerate(chunk):
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + i + 1
        shift += 7
    raise _NotPlain


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
