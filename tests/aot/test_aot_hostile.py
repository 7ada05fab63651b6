"""Damaged and hostile compiled artifacts: a library that is truncated, has flipped code or weight
bytes, or whose metadata JSON is corrupt or lies is refused with a LoadError before any of its code
runs (libraries that could crash are loaded in a child process: a signal there fails the test);
names written into the C header and the LLVM module cannot inject code; unpickling never runs a
library planted by another user."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import stat
import subprocess
import tempfile
import warnings

import numpy as np
import pytest
from aot_helpers import assert_refused, edit_library, elf_sections, elf_symbol, inputs_for, load_in_child

import convc
from convc.abi import ABI_VERSION
from convc.compiler import build
from convc.codegen.artifacts import CacheWarning, c_escape, c_string, verify_library

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
pytestmark = needs_cc


@pytest.fixture
def lib_copy(lenet_lib, tmp_path):
    """A copy of the lenet library to damage."""
    path = tmp_path / "model.so"
    shutil.copyfile(lenet_lib.output, path)
    return path


def flip(path, offset: int, n: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for k in range(offset, offset + n):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


# --- damage: detected before dlopen ------------------------------------------------------------

def test_the_intact_library_loads_in_a_child(lenet_lib):
    done = load_in_child(lenet_lib.output)
    assert done.returncode == 0 and done.stdout.startswith("RAN"), done.stderr


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_truncated_library_is_refused(lib_copy, percent):
    """Truncated, the file used to fault inside dlopen (SIGBUS)."""
    data = lib_copy.read_bytes()
    lib_copy.write_bytes(data[:len(data) * percent // 100])
    assert_refused(load_in_child(lib_copy), "LoadError", "has no convc integrity trailer")


def test_truncated_by_a_few_bytes_or_extended(lib_copy, tmp_path):
    data = lib_copy.read_bytes()
    lib_copy.write_bytes(data + b"\0" * 64)
    with pytest.raises(convc.LoadError, match="has no convc integrity trailer"):
        convc.load(lib_copy)
    lib_copy.write_bytes(data[:1000] + data[1064:])  # 64 bytes cut from the middle: the trailer is whole
    with pytest.raises(convc.LoadError, match="truncated or was extended"):
        convc.load(lib_copy)


def test_flipped_code_bytes_are_refused(lib_copy):
    """16 flipped bytes of machine code used to raise SIGILL in the first call."""
    offset, size, _ = elf_sections(lib_copy.read_bytes())[".text"]
    flip(lib_copy, offset + size // 2, 16)
    assert_refused(load_in_child(lib_copy), "LoadError", "is damaged: its SHA-256 does not match")


def test_flipped_weight_bytes_are_refused(lib_copy):
    """Flipped weights used to load and return NaN."""
    offset, size = elf_symbol(lib_copy.read_bytes(), "convc_weights")
    assert size > 100_000
    flip(lib_copy, offset + size // 2 + 2, 2)
    with pytest.raises(convc.LoadError, match="is damaged"):
        convc.load(lib_copy)


# --- the metadata JSON: damaged, corrupt, or lying ----------------------------------------------

def test_corrupt_metadata_json(lib_copy):
    """A library whose JSON does not parse: a LoadError, not a json.JSONDecodeError."""
    old, new = b'{"abi":%d,"convc_version"' % ABI_VERSION, b'{"abi":%d;"convc_version"' % ABI_VERSION
    shutil.copyfile(lib_copy, lib_copy.with_name("damaged.so"))
    edit_library(lib_copy.with_name("damaged.so"), old, new, resign=False)
    with pytest.raises(convc.LoadError, match="is damaged"):
        convc.load(lib_copy.with_name("damaged.so"))
    edit_library(lib_copy, old, new, resign=True)
    with pytest.raises(convc.LoadError, match="its metadata JSON is corrupt"):
        convc.load(lib_copy)


def test_arena_size_comes_from_the_compiled_code(lib_copy, lenet_lib):
    """``"arena_bytes": 1`` in the JSON used to overflow a 1-byte arena (SIGABRT, heap corruption)."""
    n = str(lenet_lib.meta["arena_bytes"]).encode()
    edit_library(lib_copy, b'"arena_bytes":' + n + b",", b'"arena_bytes":1' + b" " * (len(n) - 1) + b",",
                 resign=True)
    assert_refused(load_in_child(lib_copy), "LoadError", "metadata JSON says arena_bytes is 1",
                   f"compiled code says {int(n)}")


def test_output_shape_comes_from_the_compiled_code(lib_copy):
    """An output of [1, 10] in the JSON where the code writes [2, 10] used to overflow the output array."""
    edit_library(lib_copy, b'{"name":"output","shape":[2,10]', b'{"name":"output","shape":[1,10]', resign=True)
    assert_refused(load_in_child(lib_copy), "LoadError", "the shape of output 'output' is [1, 10]",
                   "compiled code says [2, 10]")


def test_a_library_changed_since_loading_is_not_pickled(lib_copy):
    model = convc.load(lib_copy)
    pickle.dumps(model)
    data = bytearray(lib_copy.read_bytes())
    data[len(data) // 2] ^= 1
    # replaced as a rebuild replaces it (a new file renamed over it: writing a loaded library in
    # place would change the code under the running process)
    lib_copy.with_name("new.so").write_bytes(bytes(data))
    os.replace(lib_copy.with_name("new.so"), lib_copy)
    with pytest.raises(convc.LoadError, match="changed since it was loaded"):
        pickle.dumps(model)


# --- hostile names -----------------------------------------------------------------------------

HOSTILE_OUTPUT = "y */ #define INJECTED 1 /*"
HOSTILE_INPUT = 'x\n#define INJECTED_INPUT 1\n"\\??/ é'
HOSTILE_GRAPH = 'g */\n#define INJECTED_GRAPH 1\n/* "\n@convc_injected = global i32 1\n; '


@pytest.fixture(scope="module")
def hostile_model():
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", [HOSTILE_INPUT], [HOSTILE_OUTPUT], name="relu */ /*")
    graph = helper.make_graph([node], HOSTILE_GRAPH,
                              [helper.make_tensor_value_info(HOSTILE_INPUT, TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(HOSTILE_OUTPUT, TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_c_escaping():
    assert c_string("plain_name.0") == '"plain_name.0"'
    for text in (HOSTILE_OUTPUT, HOSTILE_INPUT, HOSTILE_GRAPH, "*/", "/*", "??/", "a\\", '"', "\0", "\u2028"):
        body = c_escape(text)
        assert "*/" not in body and "/*" not in body and "??" not in body and "\n" not in body
        assert all(32 <= ord(c) < 127 for c in body)
    assert c_string("é*") == '"\\303\\251\\052"'


def test_names_cannot_inject_into_the_c_header(hostile_model, tmp_path):
    """An output named ``y */ #define INJECTED 1 /*`` used to close the header's comment and define
    INJECTED in every program including it; a newline in the graph name added LLVM IR to the module."""
    res = build(hostile_model, tmp_path / "hostile*module.so", threads=1)
    header = res.header.read_text()
    assert not re.search(r"^\s*#\s*define\s+INJECTED", header, re.M)  # (inside a comment, escaped, it is text)
    probe = tmp_path / "probe.c"
    probe.write_text(f'#include "{res.header.name}"\n'
                     "#if defined(INJECTED) || defined(INJECTED_INPUT) || defined(INJECTED_GRAPH)\n"
                     "#error a model name defined a macro\n#endif\n"
                     "int main(void) { return convc_num_outputs() == 1 ? 0 : 1; }\n")
    done = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", "-Wcomment", "-Wtrigraphs", "-c", str(probe),
                           f"-I{tmp_path}", "-o", str(tmp_path / "probe.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    model = convc.load(res.output)
    assert [s.name for s in model.inputs] == [HOSTILE_INPUT]
    assert [s.name for s in model.outputs] == [HOSTILE_OUTPUT]
    assert model.metadata["name"] == HOSTILE_GRAPH
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_array_equal(model(x), np.maximum(x, 0))
    import ctypes
    assert not hasattr(ctypes.CDLL(str(res.output)), "convc_injected")


def test_graph_name_cannot_inject_llvm_ir_in_the_jit(hostile_model):
    model = convc.compile(hostile_model, cache=False, threads=1)
    engine = model._runner._keepalive
    assert engine.engine.get_global_value_address("convc_injected") == 0
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_array_equal(model(x), np.maximum(x, 0))


def test_target_features_are_names():
    from convc.codegen.target import resolve_target
    with pytest.raises(convc.CompileError, match="extra features"):
        resolve_target("x86-64-v3,+avx2 */ #define X")


# --- unpickling a loaded library: no planted code -----------------------------------------------

@pytest.fixture
def pickled_library(lenet_lib, monkeypatch, tmp_path):
    """(pickle of a model loaded from the lenet library, its expected outputs), with CONVC_CACHE_DIR
    unset and the temporary directory in this test's folder."""
    model = convc.load(lenet_lib.output)
    x, = inputs_for(model, seed=3)
    blob = pickle.dumps(model)
    monkeypatch.delenv("CONVC_CACHE_DIR", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return blob, x, model(x), tmp / f"convc-{os.getuid()}"


def plant(folder, lenet_lib, tmp_path):
    """Another library of the lenet's size with a valid trailer, where an unpickle would look."""
    import hashlib
    data = lenet_lib.output.read_bytes()
    target = folder / "libraries" / f"{hashlib.sha256(data).hexdigest()[:24]}-{lenet_lib.output.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    other = tmp_path / "other.so"
    shutil.copyfile(lenet_lib.output, other)
    offset, size = elf_symbol(other.read_bytes(), "convc_weights")
    edit = bytearray(other.read_bytes())
    edit[offset:offset + 4096] = bytes(4096)  # other weights, the same size, signed
    other.write_bytes(bytes(edit[:-64]))
    from convc.codegen.artifacts import sign_library
    sign_library(other, ABI_VERSION)
    verify_library(other)
    shutil.copyfile(other, target)
    assert target.stat().st_size == len(data)
    return target


def test_unpickle_writes_to_a_private_directory(pickled_library):
    blob, x, want, base = pickled_library
    model = pickle.loads(blob)
    np.testing.assert_array_equal(model(x), want)
    assert os.path.dirname(model.library) == str(base / "libraries")
    for folder in (base, base / "libraries"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    again = pickle.loads(blob)  # the same file, reused
    assert again.library == model.library


@pytest.mark.parametrize("how", ["world-writable", "another owner"])
def test_unpickle_refuses_a_directory_another_user_controls(pickled_library, lenet_lib, tmp_path, how):
    """Another user could create $TMPDIR/convc-<uid> (mode 0777) with a same-size library in it,
    which unpickling then ran."""
    blob, x, want, base = pickled_library
    planted = plant(base, lenet_lib, tmp_path)
    if how == "world-writable":
        for folder in (base, base / "libraries"):
            os.chmod(folder, 0o777)
        match = "can be written by everyone"
    else:
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        for folder in (base, base / "libraries"):
            os.chown(folder, 12345, 12345)
        match = "owned by another user"
    with pytest.warns(CacheWarning, match=match):
        model = pickle.loads(blob)
    np.testing.assert_array_equal(model(x), want)
    assert not model.library.startswith(str(base))
    assert planted.exists()  # untouched


def test_unpickle_does_not_reuse_a_file_of_the_same_size(pickled_library, lenet_lib, tmp_path):
    blob, x, want, base = pickled_library
    (base / "libraries").mkdir(mode=0o700, parents=True)
    os.chmod(base, 0o700)
    planted = plant(base, lenet_lib, tmp_path)  # e.g. damaged since, or written by a bug
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = pickle.loads(blob)
    assert model.library == str(planted)
    np.testing.assert_array_equal(model(x), want)
    assert planted.read_bytes() == lenet_lib.output.read_bytes()


def test_unpickle_with_an_unsafe_cache_dir(pickled_library, monkeypatch, tmp_path):
    blob, x, want, _ = pickled_library
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(shared))
    with pytest.warns(CacheWarning, match="can be written by everyone"):
        model = pickle.loads(blob)
    np.testing.assert_array_equal(model(x), want)
    assert not (shared / "libraries").exists()


@pytest.mark.slow
def test_a_library_rebuilt_in_place_loads_its_new_code(lenet_file, tmp_path):
    """dlopen of a path loaded before returns the library loaded then: reloading a library rebuilt at
    the same path used to run the old code (and weights) silently."""
    from aot_helpers import write_model
    path = tmp_path / "model.so"
    build(str(lenet_file), path, threads=1)
    first = convc.load(path)
    other = write_model(tmp_path / "other.onnx", "lenet", batch=2, seed=5)
    build(str(other), tmp_path / "build" / "model.so", threads=1)
    os.replace(tmp_path / "build" / "model.so", path)  # as `convc compile -o model.so` replaces it
    second = convc.load(path)
    x, = inputs_for(first, seed=1)
    want = convc.compile(other, cache=False, threads=1)(x)
    np.testing.assert_allclose(second(x), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first(x), want)
