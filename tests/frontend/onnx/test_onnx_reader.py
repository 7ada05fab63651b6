"""Damaged and hostile model sources (frontend/onnx/reader.py): unreadable files and bytes through every
entry point, external tensor data confined to the model's directory, and sizes checked before numpy
allocates anything. Every failure is a ModelImportError naming the file or tensor and the problem."""
from __future__ import annotations

import os
import re
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_import_helpers import INT64, make_model

import convc
from convc.errors import ModelImportError
from convc.frontend.onnx import import_onnx
from convc.models import lenet5

X = np.arange(4, dtype=np.float32).reshape(1, 4)


# --- unreadable sources -------------------------------------------------------------------------
def _sources(tmp_path) -> dict[str, tuple[object, str]]:
    """Each damaged source and a word its error must contain (the file, or what was given)."""
    good = lenet5().SerializeToString()
    (tmp_path / "garbage.onnx").write_bytes(b"\xff" * 64)
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "a_directory.onnx").mkdir()
    return {
        "bytes": (b"\xff" * 64, "the given bytes is not an ONNX model"),
        "garbage file": (str(tmp_path / "garbage.onnx"), "garbage.onnx is not an ONNX model"),
        "truncated file": (tmp_path / "truncated.onnx", "truncated.onnx is not an ONNX model"),
        "missing file": (str(tmp_path / "missing.onnx"), "missing.onnx: no such file"),
        "directory": (str(tmp_path / "a_directory.onnx"), "a_directory.onnx: it is a directory"),
        "not a model": (3.5, "expected a path, bytes or onnx.ModelProto, got float"),
    }


ENTRY_POINTS = {
    "compile": lambda m: convc.compile(m),
    "compile with batch": lambda m: convc.compile(m, batch=2),
    "InferenceSession": lambda m: convc.InferenceSession(m),
    "profile": lambda m: convc.profile(m),
    "Trainer": lambda m: convc.Trainer(m, input_shape=(2, 1, 28, 28)),
    "check": lambda m: __import__("convc.check", fromlist=["check_model"]).check_model(m),
    "backend": lambda m: __import__("convc.backend", fromlist=["prepare"]).prepare(m),
    "import_onnx": lambda m: import_onnx(m),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("source", ["bytes", "garbage file", "truncated file", "missing file", "directory",
                                    "not a model"])
def test_unreadable_model_is_a_model_import_error(tmp_path, entry, source):
    """Was: protobuf's DecodeError from has_dynamic_batch, FileNotFoundError, onnx's ValueError."""
    model, needle = _sources(tmp_path)[source]
    with pytest.raises(ModelImportError) as info:
        ENTRY_POINTS[entry](model)
    assert needle in str(info.value)


@pytest.fixture(params=[False, True], ids=["no-cache", "cache"])
def cache(request, tmp_path, monkeypatch):
    """With the compile cache on, convc.compile reads a model file first to hash it."""
    monkeypatch.setenv("CONVC_NO_CACHE", "" if request.param else "1")
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    return request.param


def test_a_fifo_is_refused_without_blocking(tmp_path, cache):
    """With the cache on, the bytes hashed for it were read without a look at the file first: a FIFO
    blocked convc.compile until someone wrote to it."""
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    done = []

    def compile_it():
        with pytest.raises(ModelImportError, match="model.onnx: not a regular file"):
            convc.compile(str(fifo))
        done.append(True)
    worker = threading.Thread(target=compile_it, daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # blocked opening the FIFO: a writer lets it go on
        with open(fifo, "wb"):
            pass
        worker.join(60)
        pytest.fail("convc.compile blocked on the FIFO")
    assert done == [True]


def test_a_file_over_protobufs_limit_is_refused_without_reading_it(tmp_path, cache):
    """With the cache on, the file's 3 GiB were read (and hashed) before the reader refused it."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:  # sparse: takes no disk space
        f.truncate(3 << 30)
    with pytest.raises(ModelImportError, match=r"huge.onnx: 3221225472 bytes, over protobuf's 2 GiB limit"):
        convc.compile(str(path))


# --- external data ------------------------------------------------------------------------------
def _external(name: str, location: str, offset: int | None = None, length: int | None = None) -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ones(4, np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
    return t


def _external_model(location: str, *, constant: bool, offset=None, length=None) -> onnx.ModelProto:
    """y = x + w, with w's four floats in an external file: an initializer, or a Constant node's tensor."""
    w = _external("w", location, offset, length)
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    if constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w, name="const_w"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [] if constant else [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def model_dir(tmp_path):
    """tmp/model/ holds the model and data.bin (w = 0 1 2 3); tmp/secret.bin lies outside it."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "data.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "secret.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
    os.symlink(tmp_path / "secret.bin", d / "link_out.bin")
    os.symlink(d / "data.bin", d / "link_in.bin")
    (d / "sub").mkdir()
    return d


@pytest.mark.parametrize("constant", [False, True], ids=["initializer", "Constant"])
@pytest.mark.parametrize("location", ["data.bin", "link_in.bin", "sub/../data.bin"])
def test_external_data_inside_the_model_directory_loads(model_dir, monkeypatch, location, constant):
    """A Constant node's external tensor used to be resolved against the current directory."""
    monkeypatch.chdir(model_dir.parent)  # not the model's directory
    onnx.save(_external_model(location, constant=constant), str(model_dir / "m.onnx"))
    np.testing.assert_array_equal(convc.compile(str(model_dir / "m.onnx"))(X), X + np.arange(4))


HOSTILE = {
    "missing file": ("missing.bin", {}, "'missing.bin' does not exist in"),
    "parent escape": ("../secret.bin", {}, "outside the model's directory"),
    "deep escape": ("../../../../../../etc/passwd", {}, "resolves to /etc/passwd, outside the model's directory"),
    "absolute path": ("/etc/passwd", {}, "'/etc/passwd' is an absolute path"),
    "symlink out": ("link_out.bin", {}, "outside the model's directory"),
    "the directory itself": (".", {}, "outside the model's directory"),
    "a subdirectory": ("sub", {}, "is not a regular file"),
    "offset 2**40": ("data.bin", {"offset": 2**40}, "offset 1099511627776 is beyond the end of the file (16 bytes)"),
    "length 2**40": ("data.bin", {"length": 2**40}, "length 1099511627776 is beyond the end of the file"),
    "offset + length past the end": ("data.bin", {"offset": 8, "length": 16}, "offset 8 + length 16 is beyond"),
    "too short for the shape": ("data.bin", {"length": 8}, "holds 8 bytes at offset 0, but shape (4,) of float32 "
                                                           "needs 16"),
    "offset not a number": ("data.bin", {"offset": "-1"}, "has offset='-1', expected a non-negative integer"),
}


@pytest.mark.parametrize("constant", [False, True], ids=["initializer", "Constant"])
@pytest.mark.parametrize("case", HOSTILE)
def test_external_data_is_confined_to_the_model_directory(model_dir, monkeypatch, case, constant):
    location, extra, needle = HOSTILE[case]
    monkeypatch.chdir(model_dir)  # the directory onnx would resolve a bare tensor against
    onnx.save(_external_model(location, constant=constant, **extra), str(model_dir / "m.onnx"))
    with pytest.raises(ModelImportError) as info:
        convc.compile(str(model_dir / "m.onnx"))
    message = str(info.value)
    assert needle in message
    assert ("tensor attribute 'value' of node 'const_w' (Constant)" if constant else "initializer 'w'") in message
    assert "m.onnx" in message


@pytest.mark.parametrize("command", ["run", "info", "check", "profile"])
def test_cli_confines_external_data_too(model_dir, capsys, command):
    """The CLI read models with onnx.load, which follows onnx's own (version-dependent) rules."""
    from convc.cli import main
    onnx.save(_external_model("../secret.bin", constant=False), str(model_dir / "m.onnx"))
    assert main([command, str(model_dir / "m.onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convc: error: initializer 'w' of ") and "outside the model's directory" in err


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "ModelProto"])
def test_external_data_without_a_model_file_is_refused(model_dir, monkeypatch, as_bytes):
    """Bytes or a proto have no directory: convc must not read data.bin from the current directory."""
    monkeypatch.chdir(model_dir)
    proto = _external_model("data.bin", constant=False)
    with pytest.raises(ModelImportError, match=r"initializer 'w' of the (given bytes|ModelProto) keeps its data in an "
                                               r"external file \('data.bin'\).*pass the model's path"):
        convc.compile(proto.SerializeToString() if as_bytes else proto)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # the caller's proto is untouched


# --- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2**31, 2**62, 2**63 - 1])
def test_huge_input_dimension_is_refused_before_anything_wraps(dim):
    """An input dim of 2**62 made the int64 element count wrap negative."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [1, dim, 4]}, ["Y"])
    with pytest.raises(ModelImportError, match=rf"graph input 'X' \(shape \(1, {dim}, 4\), float32\) needs "
                                               rf"{dim * 16} bytes \(.*\), more than convc allows"):
        import_onnx(model)


def test_huge_initializer_dims_are_refused_before_reading():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40, 2**30])
    model = make_model([helper.make_node("Add", ["X", "w"], ["Y"])], {"X": [1]}, ["Y"])
    model.graph.initializer.append(w)
    with pytest.raises(ModelImportError, match=r"initializer 'w' \(shape \(1099511627776, 1073741824\), float32\) needs"):
        import_onnx(model)


def test_negative_initializer_dims_are_refused():
    """numpy would read dims [-1] as 'infer this one' and accept the tensor with another shape."""
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.dims[:] = [-1]
    model = make_model([helper.make_node("Add", ["X", "w"], ["Y"])], {"X": [4]}, ["Y"])
    model.graph.initializer.append(w)
    with pytest.raises(ModelImportError, match=r"initializer 'w' has shape \(-1,\), with a negative dimension"):
        import_onnx(model)


def test_constant_of_shape_cannot_allocate_terabytes():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="zeros"),
             helper.make_node("Add", ["X", "big"], ["Y"], name="add")]
    model = make_model(nodes, {"X": [1]}, ["Y"], {"shape": np.array([2**20, 2**20], np.int64)})
    with pytest.raises(ModelImportError, match=r"node 'zeros' \(ConstantOfShape, opset 17\): its output \(shape "
                                               r"\(1048576, 1048576\), float32\) needs 4398046511104 bytes \(4.0 TiB\)"):
        import_onnx(model)


def test_folded_broadcast_cannot_square_its_inputs():
    """(n, 1) + (1, n) of two small constants is n**2 elements."""
    n = 2**19
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"], name="outer"), helper.make_node("Add", ["X", "ab"], ["Y"])]
    model = make_model(nodes, {"X": [1]}, ["Y"], {"a": np.zeros((n, 1), np.float32), "b": np.zeros((1, n), np.float32)})
    with pytest.raises(ModelImportError, match=r"node 'outer' \(Add, opset 17\): its output \(shape \(524288, 524288\)"):
        import_onnx(model)


def test_reshape_target_whose_int64_product_wraps_is_refused():
    """(2**62 + 1) * 4 wraps to 4 in int64, the element count of the input: the Reshape was accepted."""
    nodes = [helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape")]
    model = make_model(nodes, {"X": [4]}, ["Y"], {"shape": np.array([2**62 + 1, 4], np.int64)})
    with pytest.raises(ModelImportError, match=r"node 'reshape' \(Reshape, opset 17\): cannot reshape input of shape "
                                               r"\(4,\) \(4 elements\) into shape=\(4611686018427387905, 4\)"):
        import_onnx(model)


def test_size_limit_is_configurable(monkeypatch):
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [1, 1024]}, ["Y"])
    import_onnx(model)  # 4 KiB is fine by default
    monkeypatch.setenv("CONVC_MAX_BYTES", "1K")
    with pytest.raises(ModelImportError, match=r"needs 4096 bytes \(4.0 KiB\), more than convc allows for one tensor "
                                               r"or arena \(1.0 KiB: CONVC_MAX_BYTES=1K\)"):
        import_onnx(model)
    # the limit is the variable's value at each import, however often it changes
    monkeypatch.setenv("CONVC_MAX_BYTES", "8K")
    import_onnx(model)
    monkeypatch.setenv("CONVC_MAX_BYTES", "1K")
    with pytest.raises(ModelImportError, match=r"CONVC_MAX_BYTES=1K"):
        import_onnx(model)
    monkeypatch.setenv("CONVC_MAX_BYTES", "lots")
    for _ in range(2):
        with pytest.raises(convc.ConvcError, match=r"CONVC_MAX_BYTES='lots' is not a positive number of bytes"):
            import_onnx(model)
    monkeypatch.delenv("CONVC_MAX_BYTES")
    import_onnx(model)


def test_an_import_reads_the_size_limit_once():
    """Inside held_limit (an import) every check uses the limit read on entry; threads hold their own."""
    import threading

    from convc.limits import check_size, held_limit
    seen = []
    with held_limit():
        os.environ["CONVC_MAX_BYTES"] = "1K"
        try:
            assert check_size("x", (1024,), np.float32) == 4096  # the limit held: half the memory
            worker = threading.Thread(target=lambda: seen.append(pytest.raises(convc.ConvcError, check_size, "x",
                                                                               (1024,), np.float32)))
            worker.start()
            worker.join()
        finally:
            del os.environ["CONVC_MAX_BYTES"]
    assert "CONVC_MAX_BYTES=1K" in str(seen[0].value)


def test_range_with_a_huge_count_is_refused():
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["X", "rf"], ["Y"])]
    model = make_model(nodes, {"X": [1]}, ["Y"], {"start": np.array(0, np.int64), "limit": np.array(2**62, np.int64),
                                                  "delta": np.array(1, np.int64)})
    with pytest.raises(ModelImportError, match=r"node 'range' \(Range, opset 17\): its output \(shape "
                                               r"\(4611686018427387904,\), int64\)"):
        import_onnx(model)


def test_non_utf8_string_attribute_is_a_model_import_error():
    node = helper.make_node("Pad", ["X", "pads"], ["Y"], name="pad")
    node.attribute.append(helper.make_attribute("mode", b"\xff\xfe"))
    model = make_model([node], {"X": [1, 4]}, ["Y"], {"pads": np.array([0, 1, 0, 1], np.int64)})
    with pytest.raises(ModelImportError, match=r"node 'pad' \(Pad, opset 17\): attribute 'mode' is not UTF-8 text"):
        import_onnx(model)


def test_constant_tensor_that_does_not_fit_its_shape():
    t = helper.make_tensor("v", INT64, [3], [1, 2, 3])
    t.dims[:] = [5]
    node = helper.make_node("Constant", [], ["c"], value=t, name="const")
    model = make_model([node, helper.make_node("Reshape", ["X", "c"], ["Y"])], {"X": [6]}, ["Y"])
    with pytest.raises(ModelImportError, match=r"node 'const' \(Constant, opset 17\): tensor attribute 'value' cannot "
                                               r"be read"):
        import_onnx(model)


# --- protobuf values no valid model has (found by tests/fuzz) --------------------------------------
def test_a_name_that_is_not_utf8_is_a_model_import_error():
    """protobuf returns bytes for such a string field, and onnx's schema lookup raised TypeError."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"], name="act")], {"X": [4]}, ["Y"])
    data = model.SerializeToString().replace(b"Relu", b"\xffelu")
    with pytest.raises(ModelImportError, match=r"the given bytes: model.graph.node\[0\].op_type is not UTF-8 text "
                                               r"\(b'\\xffelu'\)"):
        convc.compile(data)


def _strings_everywhere() -> onnx.ModelProto:
    """Every kind of place a string sits in: repeated in a node, a tensor's name and its external
    data's keys, a tensor attribute, a graph's doc string, a value's type (Qq<n> marks each)."""
    w = numpy_helper.from_array(np.full(4, 2.0, np.float32), "Qq1w")
    w.raw_data = np.full(4, 2.0, np.float32).tobytes()
    unused = _external("Qq3unused", "Qq4data.bin")
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32), "Qq5c"))
    nodes = [const, helper.make_node("Add", ["X", "Qq1w"], ["s"]), helper.make_node("Mul", ["s", "c"], ["Qq2y"])]
    model = make_model(nodes, {"X": [4]}, ["Qq2y"], {})
    model.graph.initializer.extend([w, unused])
    model.graph.doc_string = "Qq6doc"
    model.graph.output[0].type.denotation = "Qq7type"
    return model


@pytest.mark.parametrize("mark, path", [
    (b"Qq1", "model.graph.node[1].input[1]"),            # the first place the string is serialized
    (b"Qq2", "model.graph.node[2].output[0]"),
    (b"Qq3", "model.graph.initializer[1].name"),
    (b"Qq4", "model.graph.initializer[1].external_data[0].value"),
    (b"Qq5", "model.graph.node[0].attribute[0].t.name"),
    (b"Qq6", "model.graph.doc_string"),
    (b"Qq7", "model.graph.output[0].type.denotation"),
])
def test_every_string_field_is_checked_for_utf8(mark, path):
    """The check reads only string and message fields (no tensor's raw data), wherever they nest."""
    data = _strings_everywhere().SerializeToString()
    with pytest.raises(ModelImportError, match=rf"the given bytes: {re.escape(path)} is not UTF-8 text \(b'\\xffq"):
        import_onnx(data.replace(mark, b"\xff" + mark[1:], 1))


def test_the_model_with_every_string_valid_imports():
    model = _strings_everywhere()
    model.graph.initializer.pop()  # its data file does not exist
    y = convc.compile(model)(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(y, (np.arange(4) + 2.0).astype(np.float32))


def test_an_element_type_onnx_does_not_define():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [4]}, ["Y"])
    model.graph.input[0].type.tensor_type.elem_type = 999  # protobuf's enum name lookup raised ValueError
    with pytest.raises(ModelImportError, match=r"graph input 'X' has element type 999 \(not a valid value\)"):
        import_onnx(model)



@pytest.mark.parametrize("elem_type", [TensorProto.BOOL, TensorProto.INT32, TensorProto.DOUBLE, 999])
def test_an_output_declared_with_another_type_is_refused(elem_type):
    """convc returned float32 for an output the file declares as, say, bool (onnxruntime refuses it)."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [4]}, {"Y": elem_type})
    with pytest.raises(ModelImportError, match=r"graph output 'Y' is declared \w+.*, but the graph computes float32"):
        import_onnx(model)


def test_a_graph_without_outputs_is_refused():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [4]}, [])
    with pytest.raises(ModelImportError, match="the graph has no outputs"):
        import_onnx(model)


@pytest.mark.parametrize("cut", [0, 10, 15])
def test_initializer_data_of_the_wrong_length(cut):
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.raw_data = w.raw_data[:cut] if cut else b"\0" * 20
    model = make_model([helper.make_node("Add", ["X", "w"], ["Y"])], {"X": [4]}, ["Y"])
    model.graph.initializer.append(w)
    with pytest.raises(ModelImportError, match=rf"initializer 'w' holds {cut or 20} bytes of data, but shape \(4,\) of "
                                               r"float32 needs 16"):
        import_onnx(model)


# --- window attributes ---------------------------------------------------------------------------
B32 = 2**32


@pytest.mark.parametrize("op, attrs, needle", [
    # kernel 2**32 x 2**32: its int64 tap count wrapped to 0, so the pool was unrolled tap by tap (a hang)
    ("MaxPool", {"kernel_shape": [B32, B32], "strides": [B32, B32], "pads": [B32 - 1] * 4}, "MaxPool kernel_shape="),
    ("AveragePool", {"kernel_shape": [2**40, 2], "strides": [1, 1], "pads": [2**40 - 1, 0, 2**40 - 1, 0]},
     "AveragePool kernel_shape="),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [B32, B32], "pads": [B32] * 4, "strides": [B32, B32]},
     "MaxPool strides="),
    # a window of 2**26 taps on a 4x4 input (legal ONNX with SAME padding): hours of run time
    ("MaxPool", {"kernel_shape": [2**13, 2**13], "auto_pad": "SAME_UPPER"}, "has 67108864 taps per window; convc "
                                                                            "pools windows of at most 16777216 taps"),
    ("Conv", {"strides": [2**62, 2**62]}, "Conv strides=(4611686018427387904, 4611686018427387904): convc supports"),
    ("Conv", {"dilations": [B32, B32], "pads": [B32] * 4}, "Conv dilations="),
])
def test_window_attributes_beyond_int32_are_refused(op, attrs, needle):
    """Products of such values overflow the int64 index arithmetic of the generated code."""
    inits = {"w": np.ones((1, 1, 2, 2), np.float32)} if op == "Conv" else {}
    node = helper.make_node(op, ["X", "w"] if op == "Conv" else ["X"], ["Y"], name="win", **attrs)
    with pytest.raises(ModelImportError, match=rf"node 'win' \({op}, opset 17\): .*{re.escape(needle)}"):
        convc.compile(make_model([node], {"X": [1, 1, 4, 4]}, ["Y"], inits))


# --- tensor values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5, np.arange(5, dtype=np.float16), np.float64(2.5),
    np.array([-128, 0, 127], np.int8), np.arange(6, dtype=np.uint8).reshape(3, 2), np.array([2**62, -1], np.int64),
    np.array([True, False, True]), np.zeros((0, 3), np.float32), np.array([1 + 2j], np.complex64),
], ids=lambda v: f"{v.dtype}{v.shape}")
def test_raw_tensor_values_are_onnxs_read_only_and_the_models_own(value):
    """The weights' usual form (raw_data) is read with one copy of the bytes, which the value owns:
    the same array onnx reads, which nothing done to the proto later changes."""
    from convc.frontend.onnx.reader import tensor_value
    t = numpy_helper.from_array(np.asarray(value), "w")
    assert t.HasField("raw_data")
    v = tensor_value(t, "initializer 'w'")
    expected = numpy_helper.to_array(t).copy()
    assert v.dtype == expected.dtype and v.shape == expected.shape
    np.testing.assert_array_equal(v, expected)
    assert not v.flags.writeable
    t.raw_data = b"\xa5" * len(t.raw_data)
    np.testing.assert_array_equal(v, expected)


def test_a_tensor_in_segments_is_refused():
    from convc.frontend.onnx.reader import tensor_value
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    t.segment.begin, t.segment.end = 0, 2
    with pytest.raises(ModelImportError, match=r"initializer 'w' cannot be read \(ValueError: .*segments"):
        tensor_value(t, "initializer 'w'")


def test_the_callers_model_changed_after_the_import_leaves_the_graph_alone():
    """A ModelProto stays the caller's: the imported weights are copies, whatever the caller does to it next."""
    w = np.arange(8, dtype=np.float32).reshape(2, 4)
    model = make_model([helper.make_node("MatMul", ["X", "w"], ["Y"])], {"X": [1, 2]}, ["Y"], {"w": w})
    graph = import_onnx(model)
    model.graph.initializer[0].raw_data = np.full(8, 9, np.float32).tobytes()
    model.graph.initializer[0].name = "other"
    np.testing.assert_array_equal(graph.tensor("w").data, w)
