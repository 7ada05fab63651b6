"""A model's weights found in its serialized bytes, so that protobuf does not copy them.

Parsing a ModelProto copies every byte of it, the weights included, and reading a tensor's
``raw_data`` copies its bytes again: two copies of 100 MB for ResNet-50 before a weight is in a
numpy array. ``split_weights`` walks the protobuf wire format of the top-level graph (the
structure only: one step per field, never per byte of data) and returns the model's bytes
without its initializers' ``raw_data``, to parse, and where each initializer's ``raw_data`` lies
in the original bytes, to copy once into its array (frontend/onnx/reader.py).

Anything it does not expect (a group, a wire type no protobuf writes, a length past the end) makes
it return None: the caller parses the bytes as they are, and protobuf says what is wrong. Fields
are kept in their order, and a field that occurs twice is kept twice, so protobuf merges the
stripped bytes exactly as it would have merged the original; of several ``raw_data`` fields of
one tensor the last counts, as in protobuf.
"""
from __future__ import annotations

MODEL_GRAPH = 7          # ModelProto.graph
GRAPH_INITIALIZER = 5    # GraphProto.initializer (repeated TensorProto)
TENSOR_RAW_DATA = 9      # TensorProto.raw_data
LEN = 2                  # the wire type of strings, bytes and messages


class _NotPlain(Exception):
    pass


def split_weights(data: bytes) -> tuple[bytes, list[tuple[int, int] | None]] | None:
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
    result = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _NotPlain


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
