"""convc/model_file.py: a model's bytes split into its structure (parsed by protobuf) and its
initializers' raw data (read once, by convc) parse to the same model as the bytes as they are, for
models written by onnx, models whose fields protobuf merges, and damaged bytes; a large file is
read that way from the file, each byte once."""
from __future__ import annotations

import itertools
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc import model_file
from convc.frontend.onnx import import_onnx
from convc.frontend.onnx.reader import read_once
from convc.model_file import split_weights
from convc.models import lenet5


def parse(data: bytes) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(data)
    return m


def joined(data: bytes) -> onnx.ModelProto | None:
    """The model split_weights and protobuf read from ``data``, raw data put back; None when the
    split declines or its structure does not parse (the reader then parses ``data`` as it is)."""
    split = split_weights(data)
    if split is None:
        return None
    stripped, spans = split
    try:
        m = parse(stripped)
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError
        return None
    assert len(spans) == len(m.graph.initializer)
    for t, span in zip(m.graph.initializer, spans):
        assert not t.HasField("raw_data")
        if span is not None:
            t.raw_data = data[span[0]:span[1]]
    return m


def mixed() -> onnx.ModelProto:
    """Initializers with raw data, with float_data, empty, and a raw_data field written twice."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    listed = helper.make_tensor("b", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])  # float_data, no raw_data
    empty = numpy_helper.from_array(np.zeros((0,), np.float32), "empty")
    twice = numpy_helper.from_array(np.arange(4, dtype=np.float32), "twice")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "mixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [w, listed, empty, twice])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("name", ["lenet", "mixed"])
def test_the_split_parses_to_the_same_model(name):
    model = lenet5() if name == "lenet" else mixed()
    data = model.SerializeToString()
    assert joined(data) == parse(data)
    stripped, spans = split_weights(data)
    assert len(stripped) < len(data) // 10 or name == "mixed"
    assert sum(s is not None for s in spans) == sum(t.HasField("raw_data") for t in model.graph.initializer)


def merged_bytes() -> bytes:
    """Two graph fields (protobuf merges them: the initializers of both, in order), a tensor's
    raw_data written twice (the last counts) and a length written with more bytes than it needs."""
    a, b = mixed(), mixed()
    b.graph.initializer[0].raw_data = np.ones(12, np.float32).tobytes()
    b.graph.initializer[0].name = "w2"
    tensor = b.graph.initializer[3]
    again = tensor.SerializeToString() + TensorProto(raw_data=np.full(4, 7, np.float32).tobytes()).SerializeToString()
    graph_b = onnx.GraphProto()
    graph_b.initializer.extend(b.graph.initializer[:3])
    graph_bytes = graph_b.SerializeToString() + b"\x2a" + _varint(len(again)) + again  # initializer: field 5
    padded_length = bytes([len(graph_bytes) & 0x7F | 0x80, (len(graph_bytes) >> 7) | 0x80, 0])  # 3 bytes
    return a.SerializeToString() + b"\x3a" + padded_length + graph_bytes  # graph: field 7


def test_fields_protobuf_merges_are_merged_alike():
    data = merged_bytes()
    expected = parse(data)
    assert len(expected.graph.initializer) == 8
    np.testing.assert_array_equal(numpy_helper.to_array(expected.graph.initializer[7]), np.full(4, 7, np.float32))
    assert joined(data) == expected


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def test_damaged_bytes_parse_alike_or_not_at_all():
    """Cut, flipped and overwritten bytes of a model: whenever the split's structure parses, the
    bytes as they are parse to the same model; else the reader parses them as they are."""
    data = mixed().SerializeToString()
    rng = np.random.default_rng(17)
    compared = 0
    for _ in range(600):
        d = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:
            d = d[:rng.integers(len(d))]
        else:
            for _ in range(rng.integers(1, 4)):
                d[rng.integers(len(d))] = rng.integers(256) if kind == 1 else d[rng.integers(len(d))]
        d = bytes(d)
        ours = joined(d)
        if ours is None:
            continue
        compared += 1
        assert ours == parse(d), d  # DecodeError here: the split took bytes protobuf refuses
    assert compared > 100


def test_a_group_or_a_length_past_the_end_is_left_to_protobuf():
    data = lenet5().SerializeToString()
    assert split_weights(data + b"\x0b") is None                 # a group's start (wire type 3)
    assert split_weights(data + b"\x3a\xff\xff\x01") is None     # a graph field longer than what is left
    assert split_weights(data[:-3]) is None or joined(data[:-3]) is None


@pytest.mark.parametrize("pages", [False, True], ids=["in-memory", "by-pages"])
def test_a_model_file_compiles_from_its_split_bytes(tmp_path, monkeypatch, pages):
    """read_once splits a file; the weights are arrays of their own, never views of the file's bytes
    (by pages, read straight into them)."""
    if pages:  # a file this small is read whole and split in memory otherwise
        monkeypatch.setattr(model_file, "SMALL_FILE", 0)
    model = mixed()
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    read = read_once(str(path))
    assert read.raw is not None and not read.proto.graph.initializer[0].HasField("raw_data")
    assert isinstance(read.raw[0], np.ndarray) == pages
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer[:2])
    np.testing.assert_allclose(convc.compile(path)(x), x @ w.T + b, rtol=1e-5, atol=1e-6)
    g = import_onnx(read)
    for i, name in enumerate(["w", "twice"]):
        value = g.tensor(name).data if g.has_tensor(name) else None
        expected = numpy_helper.to_array(model.graph.initializer[[0, 3][i]])
        if value is not None:
            np.testing.assert_array_equal(value, expected)
            assert not value.flags.writeable
            root = value
            while isinstance(root, np.ndarray) and root.base is not None:
                root = root.base
            assert memoryview(root).nbytes == expected.nbytes  # it keeps no more of the file alive


@pytest.mark.parametrize("name", ["lenet", "mixed", "merged"])
def test_a_large_file_is_read_by_pages_each_byte_once(tmp_path, monkeypatch, name):
    """By pages: the structure and the raw data are those the in-memory split finds, the pieces are
    the file's bytes (hashed in order, the file's digest), and no byte is read twice."""
    import hashlib
    data = {"lenet": lenet5().SerializeToString(), "mixed": mixed().SerializeToString(),
            "merged": merged_bytes()}[name]
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    monkeypatch.setattr(model_file, "SMALL_FILE", 0)
    monkeypatch.setattr(model_file._Pages, "SIZE", 64)  # many pages, even for these small files
    read = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: read.append((at, at + n)) or real(fd, n, at))
    got = model_file.read_model_bytes(path)
    stripped, spans = split_weights(data)
    assert got.stripped == stripped
    assert [None if r is None else bytes(r) for r in got.raw] == [None if s is None else data[s[0]:s[1]] for s in spans]
    assert got.whole() == data
    assert got.digest() == hashlib.sha256(data).digest()  # hashed on a thread while it was read
    read.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(read))  # pages: each read once


def test_the_hashing_thread_ends_without_anyone_asking_for_the_digest(tmp_path, monkeypatch):
    """A compile without the cache never asks for the file's digest: the thread that hashed it while
    it was read must end anyway (one left waiting per compile would pile up in a long process)."""
    import hashlib
    import threading
    monkeypatch.setattr(model_file, "SMALL_FILE", 0)
    path = tmp_path / "m.onnx"
    data = lenet5().SerializeToString()
    path.write_bytes(data)
    got = model_file.read_model_bytes(path)
    assert got.hasher is not None and got.hasher._thread is not None
    got.hasher._thread.join(timeout=30)
    assert not got.hasher._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "convc-model-hash"]
    assert got.digest() == hashlib.sha256(data).digest()


def test_a_piece_the_hashing_thread_cannot_hash_fails_the_digest():
    """A failure on the hashing thread is raised by digest(), never a digest of part of the file."""
    hasher = model_file._Hasher()
    hasher.add(b"abc")
    hasher.add("not bytes")
    hasher.add(b"def")
    with pytest.raises(TypeError):
        hasher.digest()


def test_a_file_the_walk_does_not_take_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "SMALL_FILE", 0)
    path = tmp_path / "g.onnx"
    data = lenet5().SerializeToString() + b"\x0b"  # a group's start: not for the walk
    path.write_bytes(data)
    got = model_file.read_model_bytes(path)
    assert got.stripped is None and got.whole() == data


def test_a_structure_only_read_leaves_the_weights_out(tmp_path):
    """read_model(external_data=False) (input signatures, a free batch) parses no weight."""
    from convc.frontend.onnx.reader import read_model
    model = mixed()
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    for source in (str(path), model.SerializeToString()):
        structure = read_model(source, external_data=False)
        assert [t.name for t in structure.graph.initializer] == [t.name for t in model.graph.initializer]
        assert [list(t.dims) for t in structure.graph.initializer] == [list(t.dims) for t in model.graph.initializer]
        assert not any(t.HasField("raw_data") for t in structure.graph.initializer)
        assert structure.graph.node == model.graph.node and structure.graph.input == model.graph.input
    assert read_model(str(path)) == model
