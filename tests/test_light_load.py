"""Loading compiled code imports no code generator: unpickling a JIT model, ``convc.load`` of a
library and a warm ``convc.compile`` of an ONNX file run in a fresh process without the IR
(networkx), the passes, the frontend (onnx), the kernel emitters or the cache's compiling half
(codegen/entry.py, codegen/cache_key.py). That import was most of a worker's first call after
unpickling (about 0.5 s of CPU).

llvmlite.ir itself cannot be left out of the JIT paths: llvmlite.binding imports it (typeref), and
MCJIT needs llvmlite.binding. The library path needs no llvmlite at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convc

# what a process that only loads compiled code must not import (a name or its submodules)
HEAVY = ("networkx", "onnx", "convc.ir", "convc.passes", "convc.frontend", "convc.ops",
         "convc.codegen.module", "convc.codegen.kernels", "convc.codegen.llvm_utils", "convc.codegen.cache",
         "convc.codegen.llvm_pool", "convc.codegen.split", "convc.codegen.aot")

REPORT = """
import json, sys
heavy = {heavy!r}
loaded = sorted(m for m in sys.modules if sys.modules[m] is not None and any(m == h or m.startswith(h + ".") for h in heavy))
print("LOADED", json.dumps({{"heavy": loaded, "llvmlite": any(m.startswith("llvmlite") for m in sys.modules)}}))
"""


def child(code: str, cache: Path) -> dict:
    """Run ``code`` in a fresh Python with the compile cache at ``cache``; what it imported."""
    env = {**os.environ, "CONVC_CACHE_DIR": str(cache)}
    env.pop("CONVC_NO_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code + REPORT.format(heavy=HEAVY)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED "))
    return json.loads(line[len("LOADED "):])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A LeNet-5 ONNX file compiled with a free batch through a fresh cache (so a child's compile of
    the same file is a warm hit), its pickle, and per-sample reference outputs. The compile runs in
    a child too: the cache key covers a fingerprint of convc's sources, which this process computed
    once, maybe long ago."""
    import onnx
    root = tmp_path_factory.mktemp("light")
    onnx.save(convc.models.lenet5(), str(root / "lenet.onnx"))
    x = np.random.default_rng(7).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(root / "x.npy", x)
    child(f"""
import pickle, numpy as np, convc
model = convc.compile({str(root / 'lenet.onnx')!r}, batch=None, threads=1)
x = np.load({str(root / 'x.npy')!r})
# per sample, on the batch-1 code the pickle carries: an unpickled model runs batch 3 as 3 chunks
np.save({str(root / 'expected.npy')!r}, np.concatenate([model(x[i:i + 1]) for i in range(len(x))]))
open({str(root / 'model.pkl')!r}, "wb").write(pickle.dumps(model))
""", root / "cache")
    return root, x, np.load(root / "expected.npy")


def test_unpickling_a_jit_model_imports_no_compiler(built):
    root, _, expected = built
    seen = child(f"""
import pickle, numpy as np
model = pickle.loads(open({str(root / 'model.pkl')!r}, "rb").read())
np.save({str(root / 'y_pickle.npy')!r}, model(np.load({str(root / 'x.npy')!r})))
""", root / "cache")
    assert seen["heavy"] == []
    np.testing.assert_array_equal(np.load(root / "y_pickle.npy"), expected)


def test_a_warm_compile_of_an_onnx_file_imports_no_compiler(built):
    """The cache entry's stored input signature lets a warm compile skip onnx; the file's bytes are
    its key. A ModelProto is hashed with SerializeToString: its caller imported onnx, nothing more."""
    root, _, expected = built
    seen = child(f"""
import numpy as np, convc
model = convc.compile({str(root / 'lenet.onnx')!r}, batch=None, threads=1)
x = np.load({str(root / 'x.npy')!r})
np.save({str(root / 'y_warm.npy')!r}, np.concatenate([model(x[i:i + 1]) for i in range(len(x))]))
""", root / "cache")
    assert seen["heavy"] == []
    np.testing.assert_array_equal(np.load(root / "y_warm.npy"), expected)
    seen = child(f"""
import numpy as np, onnx, convc
model = convc.compile(onnx.load({str(root / 'lenet.onnx')!r}), batch=None, threads=1)
np.save({str(root / 'y_proto.npy')!r}, model(np.load({str(root / 'x.npy')!r})[:1]))
""", root / "cache")
    assert [m for m in seen["heavy"] if not m.startswith("onnx")] == []
    np.testing.assert_array_equal(np.load(root / "y_proto.npy"), expected[:1])


@pytest.mark.slow  # a cold run compiles first: a few seconds
def test_a_warm_convc_run_imports_no_compiler(built):
    """`convc run m.onnx` compiles the path (not a ModelProto it read), and the CLI imports only the
    subcommand it runs: served from the cache, neither onnx nor the compiler is imported."""
    root, _, _ = built
    run = f"""
import contextlib, io
from convc.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["run", {str(root / 'lenet.onnx')!r}, "--threads", "1", "-q"]) == 0
assert "input  'input'" in out.getvalue(), out.getvalue()
"""
    child(run, root / "cache")  # cold, or warm from another test: fills the cache for these options
    assert child(run, root / "cache")["heavy"] == []


@pytest.mark.slow  # builds a shared library (LLVM and the C linker): a few seconds
def test_loading_and_unpickling_a_library_imports_no_compiler(built):
    from convc.compiler import build
    root, x, _ = built
    build(root / "lenet.onnx", root / "lenet.so", batch=3, threads=1)
    here = convc.load(root / "lenet.so")(x)
    seen = child(f"""
import pickle, numpy as np, convc
model = pickle.loads(pickle.dumps(convc.load({str(root / 'lenet.so')!r})))
np.save({str(root / 'y_lib.npy')!r}, model(np.load({str(root / 'x.npy')!r})))
""", root / "cache")
    assert seen == {"heavy": [], "llvmlite": False}
    np.testing.assert_array_equal(np.load(root / "y_lib.npy"), here)


def test_import_convc_is_light():
    """``import convc`` loads the compiler on first use of ``convc.compile`` and the rest, not before."""
    seen = child("import convc\nassert convc.CompiledModel and convc.load and convc.InputError", Path("/nonexistent"))
    assert seen == {"heavy": [], "llvmlite": False}
    seen = child("import convc\nassert convc.compile and convc.Graph and convc.OpKind and convc.Trainer", Path("/x"))
    assert "convc.ir" in seen["heavy"] and "convc.passes" in seen["heavy"]


def test_names_that_are_also_modules_stay_functions():
    """``convc.profile`` and ``convc.quantize`` are functions named like their modules; importing the
    modules later must not replace them."""
    import convc.profile  # noqa: F401
    import convc.quantize  # noqa: F401
    assert callable(convc.profile) and callable(convc.quantize)
    assert sorted(set(convc.__all__) - set(dir(convc))) == []
