"""Reading an ONNX model: a path, bytes or a ModelProto in, a ModelProto (or a ModelImportError) out.

ONNX models may come from anyone, so this is the one place that turns them into protobufs and
tensor values, and every failure is a ModelImportError naming the file (or tensor) and the
problem: a missing or unreadable file, bytes that are not a protobuf, a truncated file.

External tensor data (``data_location=EXTERNAL``: a ``location`` relative to the model file, an
``offset`` and a ``length``) is read here, by convc, never by onnx (whose checks differ between
versions, and which resolves a bare tensor against the current directory). The data must be a
regular file inside the model's own directory once every symlink is resolved; absolute locations,
``..`` escapes and symlinks leaving the directory are refused, and offset and length must lie
within the file and match the tensor's declared size, which is checked against the size limit
(convc/limits.py) before anything is read. A model given as bytes or a ModelProto has no
directory, so external data there is an error.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from convc.errors import ModelImportError
from convc.model_file import ModelBytes, model_bytes, read_file, read_model_bytes
from convc.limits import check_bytes, check_size

EXTERNAL = onnx.TensorProto.EXTERNAL
# element types whose stored bytes are exactly elements x numpy itemsize (not strings, not the
# packed 2/4/6-bit types): for these the external data's length must match the declared shape
_T = onnx.TensorProto
_PLAIN_TYPES = {_T.FLOAT, _T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.INT32, _T.INT64, _T.BOOL, _T.FLOAT16,
                _T.DOUBLE, _T.UINT32, _T.UINT64, _T.COMPLEX64, _T.COMPLEX128, _T.BFLOAT16, _T.FLOAT8E4M3FN,
                _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ}


@dataclasses.dataclass(frozen=True)
class ReadModel:
    """A model ``read_once`` read and checked, its external tensors loaded into the proto. Given to
    ``read_model`` again (one compile reads the input signature, then imports), it is returned as it
    is instead of walked again. ``external`` says whether some of its tensors came from external
    files, which the model's bytes do not cover (the compile cache hashes those bytes)."""

    proto: onnx.ModelProto
    external: bool
    # when the proto was parsed without its initializers' raw_data (convc/model_file.py): per
    # initializer its raw data, an array of its own or a view of the model's bytes (None: none)
    raw: list[np.ndarray | memoryview | None] | None = None

    def raw_data(self, index: int) -> np.ndarray | memoryview | None:
        """The raw_data of initializer ``index`` when the proto was parsed without it (else None)."""
        return None if self.raw is None else self.raw[index]


def read_once(model: Any, data: ModelBytes | None = None) -> ReadModel:
    """``read_model(model)`` kept with what a second reader needs to know (``ReadModel``); ``data``:
    the model file ``model``, when the caller has read it (``read_model_bytes``). The initializers'
    raw data of a model given as a file or bytes is not parsed by protobuf (which copied it twice)
    but read by ``tensor_value``: from a large file straight into the weights' arrays."""
    if isinstance(model, ReadModel):
        return model
    return ReadModel(*_read(model, True, data, split=True))


def read_model(model: Any, *, external_data: bool = True) -> onnx.ModelProto:
    """The ModelProto of ``model`` (a path, serialized bytes, an onnx.ModelProto or a ReadModel).

    With ``external_data`` (the default) every external tensor of a model read from a path is
    loaded from the model's directory into the returned proto, which then refers to no file; a
    ModelProto given by the caller is never modified. Without it, external tensors are left as
    references and a file's or bytes' initializers are read without their raw data (enough to read
    the graph's structure, without copying its weights)."""
    if isinstance(model, ReadModel):  # read, checked and loaded already
        return model.proto
    return _read(model, external_data, split=not external_data)[0]


def _read(model: Any, external_data: bool, data: ModelBytes | None = None, split: bool = False) -> tuple:
    """(the proto, whether it had external tensors: loaded with ``external_data``, and with ``split``
    ReadModel.raw or None); ``data``: the file ``model``, read already."""
    base, raw = None, None
    if isinstance(model, onnx.ModelProto):
        proto, what = model, "the ModelProto"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        what = "the given bytes"
        proto, raw = _parse_model(model_bytes(bytes(model)) if split else ModelBytes([bytes(model)]), what)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        what = str(path)
        if data is None:  # weights read into arrays only when they are wanted
            data = read_model_bytes(path) if split and external_data else \
                model_bytes(read_file(path)) if split else ModelBytes([read_file(path)])
        proto, raw = _parse_model(data, what)
        base = path.parent
    else:
        raise ModelImportError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelImportError(f"{what} is not an ONNX model (it has no graph or no IR version)")
    _check_text(proto, "model", what)
    if not external_data:
        return proto, False, raw
    tensors = list(external_tensors(proto.graph))
    if tensors and base is None:
        t, where = tensors[0]
        raise ModelImportError(
            f"{where} of {what} keeps its data in an external file ({_info(t).get('location', '')!r}), which "
            "convc reads only relative to a model file: pass the model's path instead")
    for t, where in tensors:
        _load_external(t, where, base, what)
    return proto, bool(tensors), raw


def _parse_model(data: ModelBytes, what: str) -> tuple[onnx.ModelProto, list | None]:
    """The model parsed without its initializers' raw_data when it was split, and ReadModel.raw;
    bytes the split did not take, or that do not parse once split, are parsed as they are (protobuf
    says what is wrong)."""
    if data.stripped is not None and sys.byteorder == "little":
        try:
            return _parse(data.stripped, what), data.raw
        except ModelImportError:
            pass
    return _parse(data.whole(), what), None


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 -- protobuf's DecodeError, or RuntimeError/ValueError by version
        raise ModelImportError(f"{what} is not an ONNX model (not a readable protobuf: truncated or corrupt; {e})") from None
    return proto


def _check_text(message: Any, path: str, what: str) -> None:
    """Every string field must be UTF-8 text: for one that is not, protobuf returns bytes, and a
    name or op type that is bytes fails far from here (onnx's schema lookup, dict keys, messages)."""
    bad = _bad_text(message)
    if bad is not None:
        at, value = bad
        raise ModelImportError(f"{what}: {path}{at} is not UTF-8 text ({value[:40]!r})")


def _bad_text(message: Any) -> tuple[str, bytes] | None:
    """(the path below ``message``, the value) of the first string field that is not UTF-8, or None.
    Only string and message fields are read: reading a bytes field (a tensor's raw_data) would copy
    it, and ListFields reads them all."""
    for name, is_message, repeated in _text_fields(message.DESCRIPTOR):
        if repeated:
            values = getattr(message, name)
            if is_message:
                for i, v in enumerate(values):
                    bad = _bad_text(v)
                    if bad is not None:
                        return f".{name}[{i}]{bad[0]}", bad[1]
            elif not all(type(v) is str for v in values):
                i, v = next((i, v) for i, v in enumerate(values) if isinstance(v, bytes))
                return f".{name}[{i}]", v
        elif is_message:
            if message.HasField(name):
                bad = _bad_text(getattr(message, name))
                if bad is not None:
                    return f".{name}{bad[0]}", bad[1]
        else:
            v = getattr(message, name)
            if isinstance(v, bytes):
                return f".{name}", v
    return None


@functools.cache
def _text_fields(descriptor: Any) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is a message, is repeated) of the string and message fields of a message type."""
    fields = []
    for f in descriptor.fields:
        if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE):
            # protobuf 6+ has is_repeated; older versions only label
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
            fields.append((f.name, f.type == f.TYPE_MESSAGE, repeated))
    return tuple(fields)


# --- tensors --------------------------------------------------------------------------------------
def external_tensors(graph: onnx.GraphProto, where: str = "") -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every tensor of the graph (initializers, node attributes, subgraphs) whose data is external."""
    def walk(g: onnx.GraphProto, prefix: str) -> Iterator[tuple[onnx.TensorProto, str]]:
        for t in g.initializer:
            yield t, f"{prefix}initializer {t.name!r}"
        for s in g.sparse_initializer:
            yield s.values, f"{prefix}sparse initializer {s.values.name!r}"
            yield s.indices, f"{prefix}indices of sparse initializer {s.values.name!r}"
        for i, node in enumerate(g.node):
            at = f"{prefix}node {node.name or f'{node.op_type}_{i}'!r} ({node.op_type})"
            for a in node.attribute:
                tensors = ([a.t] if a.HasField("t") else []) + list(a.tensors)
                for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                    tensors += [s.values, s.indices]
                for t in tensors:
                    yield t, f"tensor attribute {a.name!r} of {at}"
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from walk(sub, f"{at} subgraph {sub.name!r}: ")
    for t, w in walk(graph, where):
        if t.data_location == EXTERNAL:
            yield t, w


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _load_external(t: onnx.TensorProto, where: str, base: Path, what: str) -> None:
    """Read ``t``'s external data into ``t.raw_data``, confined to ``base`` (see the module docstring)."""
    info = _info(t)
    location = info.get("location", "")

    def fail(problem: str) -> ModelImportError:
        return ModelImportError(f"{where} of {what}: external data {location!r} {problem}")
    if not location or "\0" in location:
        raise fail("is not a file name")
    if os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        raise fail("is an absolute path; external data must be a file in the model's directory")
    root = os.path.realpath(base)
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root or target == root:
        raise fail(f"resolves to {target}, outside the model's directory {root}")
    offset, length = _number(info, "offset", fail), _number(info, "length", fail)
    if t.data_type in (_T.STRING, _T.UNDEFINED):
        raise fail(f"holds {onnx.TensorProto.DataType.Name(t.data_type)} data, which cannot be external")
    dtype = _np_dtype(t, fail)
    dims = tuple(int(d) for d in t.dims)
    declared = check_size(where, dims, dtype, ModelImportError)  # packed sub-byte types: an upper bound
    declared = declared if t.data_type in _PLAIN_TYPES else None
    try:  # no symlink may be swapped in after the check above
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise fail(f"does not exist in {root}") from None
    except OSError as e:
        raise fail(f"cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail("is not a regular file")
        size = st.st_size
        start = offset or 0
        if start > size:
            raise fail(f"offset {start} is beyond the end of the file ({size} bytes)")
        n = size - start if length is None else length
        if start + n > size:
            raise fail(f"offset {start} + length {n} is beyond the end of the file ({size} bytes)")
        if declared is not None and n != declared:
            raise fail(f"holds {n} bytes at offset {start}, but shape {dims} of {dtype} needs {declared}")
        check_bytes(where, n, ModelImportError)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        f.seek(start)
        data = f.read(n)
    if len(data) != n:
        raise fail(f"was cut short while reading ({len(data)} of {n} bytes)")
    t.raw_data = data
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT


def _number(info: dict[str, str], key: str, fail) -> int | None:
    if key not in info:
        return None
    text = info[key].strip()
    if not text.isdigit() or not text.isascii():
        raise fail(f"has {key}={info[key]!r}, expected a non-negative integer")
    return int(text)


def _np_dtype(t: onnx.TensorProto, fail) -> np.dtype:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:  # noqa: BLE001 -- KeyError/ValueError for numbers that are no ONNX type
        raise fail(f"has data type {t.data_type}, which is not an ONNX tensor type") from None


def tensor_value(t: onnx.TensorProto, what: str, raw: np.ndarray | memoryview | None = None) -> np.ndarray:
    """The numpy value of a TensorProto of the model; ModelImportError naming ``what`` when it is
    malformed (a negative or oversized shape, data that does not fit the shape, an unknown type).
    ``raw``: its raw_data, when the proto was parsed without it (ReadModel.raw_data)."""
    if t.data_location == EXTERNAL:  # read_model loads these; onnx would resolve them against the cwd
        raise ModelImportError(f"{what} keeps its data in an external file ({_info(t).get('location', '')!r}) "
                               "that was not loaded: give convc the model's path")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:  # noqa: BLE001 -- see _np_dtype
        raise ModelImportError(f"{what} has data type {t.data_type}, which is not an ONNX tensor type") from None
    dims = tuple(int(d) for d in t.dims)
    nbytes = check_size(what, dims, dtype, ModelImportError)
    if raw is not None and not t.HasField("raw_data"):  # (external data loaded into the proto replaced it)
        if t.data_type in _PLAIN_TYPES and sys.byteorder == "little" and not t.HasField("segment"):
            if len(raw) != nbytes:
                raise _wrong_length(what, len(raw), dims, dtype, nbytes)
            if isinstance(raw, np.ndarray):  # read from the file into an array of its own
                value = raw.view(dtype).reshape(dims)
            else:  # a copy: a view would keep the model's bytes alive as long as the weight
                value = np.frombuffer(raw, dtype).reshape(dims).copy()
            value.flags.writeable = False  # as the values read from the proto below
            return value
        t.raw_data = raw.tobytes()  # the rare forms: onnx reads them from the proto (read_once's own)
    plain_raw = t.HasField("raw_data") and t.data_type in _PLAIN_TYPES
    if plain_raw and sys.byteorder == "little" and not t.HasField("segment"):
        # the weights' usual form, read with one copy: protobuf hands out raw_data as a new bytes
        # object at each access, which the read-only array then owns (no later change to the proto
        # or to the caller's bytes reaches it)
        data = t.raw_data
        if len(data) != nbytes:
            raise _wrong_length(what, len(data), dims, dtype, nbytes)
        return np.frombuffer(data, dtype).reshape(dims)
    if plain_raw and len(t.raw_data) != nbytes:
        raise _wrong_length(what, len(t.raw_data), dims, dtype, nbytes)
    try:
        value = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 -- data that does not fit the shape, or onnx's own limits
        raise ModelImportError(f"{what} cannot be read ({type(e).__name__}: {e})") from None
    if value.shape != dims:
        raise ModelImportError(f"{what} holds {value.size} values, but its shape is {dims} ({math.prod(dims)} values)")
    return value


def _wrong_length(what: str, have: int, dims: tuple[int, ...], dtype: np.dtype, nbytes: int) -> ModelImportError:
    return ModelImportError(f"{what} holds {have} bytes of data, but shape {dims} of {dtype} needs {nbytes}")
