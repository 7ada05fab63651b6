"""convc.load: the same interface as convc.compile, from a library, with only ctypes and numpy."""
from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from aot_helpers import inputs_for, python

import convc
from convc.abi import ABI_VERSION
from convc.compiler import build


def test_load_matches_the_jit(lenet_lib, lenet_jit):
    model = convc.load(lenet_lib.output)
    assert isinstance(model, convc.CompiledModel)
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [(s.name, s.shape, s.dtype) for s in lenet_jit.inputs]
    assert [(s.name, s.shape) for s in model.outputs] == [(s.name, s.shape) for s in lenet_jit.outputs]
    x, = inputs_for(model, seed=1)
    np.testing.assert_allclose(model(x), lenet_jit(x), rtol=1e-5, atol=1e-7)
    assert model.run({"input": x}).keys() == {"output"}
    with pytest.raises(convc.InputError, match="shape"):
        model(np.zeros((3, 1, 28, 28), np.float32))
    assert model.metadata["abi"] == ABI_VERSION and model.metadata["name"] == "lenet5"


def test_load_without_llvmlite(lenet_lib, lenet_jit, tmp_path):
    x, = inputs_for(lenet_jit, seed=2)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import sys
sys.modules["llvmlite"] = None          # any import of llvmlite now raises ImportError
import numpy as np
import convc
model = convc.load({str(lenet_lib.output)!r})
y = model(np.load({str(tmp_path / 'x.npy')!r}))
np.save({str(tmp_path / 'y.npy')!r}, y)
bad = sorted(m for m in sys.modules if m.startswith(("llvmlite", "convc.codegen.jit", "convc.codegen.module",
                                                     "convc.codegen.kernels")) and sys.modules[m] is not None)
print("loaded:", bad)
"""
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), lenet_jit(x), rtol=1e-5, atol=1e-7)


def test_threads_are_capped_by_the_build(lenet_lib, lenet_jit):
    x, = inputs_for(lenet_jit, seed=4)
    one = convc.load(lenet_lib.output, threads=1)
    many = convc.load(lenet_lib.output, threads=64)
    assert one.threads == 1 and many.threads == 2
    np.testing.assert_allclose(one(x), many(x), rtol=1e-5, atol=1e-7)


def test_loaded_model_has_no_graph_but_says_why(lenet_lib):
    model = convc.load(lenet_lib.output)
    assert model.graph.name == "lenet5"
    with pytest.raises(AttributeError, match="loaded from the compiled library"):
        model.graph.ops()


def test_not_a_convc_library(tmp_path):
    from convc.codegen.artifacts import sign_library
    with pytest.raises(convc.LoadError, match="no such file"):
        convc.load(tmp_path / "missing.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(convc.LoadError, match="has no convc integrity trailer"):
        convc.load(junk)
    sign_library(junk, ABI_VERSION)  # whole, but still no shared library
    with pytest.raises(convc.LoadError, match="cannot load it as a shared library"):
        convc.load(junk)
    libm = "/lib/x86_64-linux-gnu/libm.so.6"
    if os.path.exists(libm):
        with pytest.raises(convc.LoadError, match="has no convc integrity trailer"):
            convc.load(libm)
        other = tmp_path / "libm.so"
        shutil.copyfile(libm, other)
        sign_library(other, ABI_VERSION)
        with pytest.raises(convc.LoadError, match="not a library built by `convc compile`"):
            convc.load(other)


def test_object_file_output_needs_no_toolchain(lenet_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang on it
    monkeypatch.delenv("CC", raising=False)
    res = build(str(lenet_file), tmp_path / "lenet.o", threads=1)
    data = res.output.read_bytes()
    assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 16)[0] == 1  # ET_REL
    assert res.header.exists() and res.object_only
    # weights are inside the object: it is at least as big as the blob
    assert len(data) > res.weights_bytes > 200_000


def test_missing_toolchain_says_what_to_install(lenet_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(convc.CompileError) as e:
        build(str(lenet_file), tmp_path / "lenet.so", threads=1)
    msg = str(e.value)
    assert "apt-get install gcc" in msg and "set CC" in msg and "-o lenet.o" in msg
    assert (tmp_path / "lenet.o").exists()  # the object is kept for linking by hand
    assert not (tmp_path / "lenet.so").exists()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("target", ["x86-64", "x86-64-v3"])
def test_portable_targets_run_here(target, lenet_file, lenet_jit, tmp_path):
    from convc.codegen.jit import Target
    if not Target.host().triple.startswith("x86_64"):
        pytest.skip("x86 host only")
    res = build(str(lenet_file), tmp_path / f"{target}.so", target=target, threads=2)
    model = convc.load(res.output)
    assert model.metadata["cpu"] == target
    x, = inputs_for(model, seed=5)
    np.testing.assert_allclose(model(x), lenet_jit(x), rtol=1e-4, atol=1e-6)


def test_cross_compiled_object_for_aarch64(lenet_file, tmp_path):
    try:
        res = build(str(lenet_file), tmp_path / "arm.o", target="aarch64", threads=2)
    except convc.CompileError as e:  # an llvmlite built without the AArch64 backend
        pytest.skip(str(e))
    data = res.output.read_bytes()
    assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 18)[0] == 183  # EM_AARCH64
    assert len(data) > res.weights_bytes  # the weights went in as an IR constant (no AArch64 assembler here)
    meta = json.loads(json.dumps(res.meta))
    assert meta["triple"].startswith("aarch64") and meta["features"] == ["neon"]
