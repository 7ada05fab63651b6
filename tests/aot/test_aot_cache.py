"""The JIT compile cache: warm compiles skip codegen and LLVM, bad entries are rebuilt, concurrent
compiles of one model all succeed."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from aot_helpers import env, inputs_for

import convc
from convc.codegen import cache as jc

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def entries(root: Path) -> list[Path]:
    return sorted(jc._entries(root).glob("*.entry"))


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[convc cache timing] {text}", file=sys.stderr)


def test_warm_compile_loads_machine_code(cache, lenet_file, capsys):
    stages: list[str] = []
    t = time.perf_counter()
    cold = convc.compile(lenet_file, threads=2)
    t_cold = time.perf_counter() - t
    assert len(entries(cache)) == 1 and len(list(jc._entries(cache).glob("src-*"))) == 1
    t = time.perf_counter()
    warm = convc.compile(lenet_file, threads=2, progress=stages.append)
    t_warm = time.perf_counter() - t
    report(capsys, f"lenet: cold {t_cold:.3f} s, warm {t_warm * 1e3:.1f} ms")
    assert any(s.startswith("compile cache hit") for s in stages)
    assert not any(s.startswith(("code generation", "LLVM", "constant folding")) for s in stages), stages
    x, = inputs_for(cold, seed=7)
    np.testing.assert_array_equal(warm(x), cold(x))
    assert warm.graph.name == "lenet5"
    assert len(warm.graph.ops()) == len(cold.graph.ops())  # rebuilt on demand


def test_graph_key_hit_without_source_alias(cache, lenet_file):
    """A Graph (no source bytes) still hits through the optimized-graph key."""
    from convc.compiler import compile_graph, load_graph
    graph = load_graph(str(lenet_file))
    first = compile_graph(graph, threads=1)
    stages: list[str] = []
    second = compile_graph(load_graph(str(lenet_file)), threads=1, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages)
    x, = inputs_for(first)
    np.testing.assert_array_equal(first(x), second(x))


@pytest.mark.slow
def test_options_and_weights_change_the_key(cache, model_dir):
    from aot_helpers import write_model
    a = write_model(model_dir / "k_a.onnx", "lenet", batch=1, seed=0)
    b = write_model(model_dir / "k_b.onnx", "lenet", batch=1, seed=1)  # same graph, other weights
    convc.compile(a, threads=1)
    convc.compile(a, threads=2)
    convc.compile(a, threads=1, batch=None)
    convc.compile(b, threads=1)
    assert len(entries(cache)) == 3  # threads differ; other weights differ; the same call again hits
    x = np.ones((1, 1, 28, 28), np.float32)
    assert not np.allclose(convc.compile(a, threads=1)(x), convc.compile(b, threads=1)(x))


@pytest.mark.slow
def test_cache_off(cache, lenet_file, monkeypatch):
    convc.compile(lenet_file, threads=1, cache=False)
    assert not cache.exists()
    monkeypatch.setenv("CONVC_NO_CACHE", "1")
    convc.compile(lenet_file, threads=1)
    assert not cache.exists()
    assert jc.cache_dir() is None


@pytest.mark.parametrize("damage", ["flip a weight byte", "flip a code byte", "truncate", "empty", "garbage header"])
@pytest.mark.slow
def test_corrupt_entry_is_removed_and_rebuilt(cache, lenet_file, damage):
    good = convc.compile(lenet_file, threads=1)
    x, = inputs_for(good, seed=9)
    want = good(x)
    path, = entries(cache)
    data = bytearray(path.read_bytes())
    if damage == "flip a weight byte":
        data[-100] ^= 0x40
    elif damage == "flip a code byte":
        data[jc.HEADER_BYTES + 4096] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data[:8] = b"GARBAGE!"
    path.write_bytes(bytes(data))
    with pytest.warns(jc.CacheWarning, match="unusable"):
        again = convc.compile(lenet_file, threads=1)
    np.testing.assert_array_equal(again(x), want)
    # rebuilt: the entry is whole again and the next compile hits without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stages: list[str] = []
        convc.compile(lenet_file, threads=1, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages)
    assert path.read_bytes()[:8] == jc.MAGIC


@pytest.mark.slow
def test_unwritable_cache_does_not_fail_the_compile(tmp_path, lenet_file, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CONVC_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    with pytest.warns(jc.CacheWarning, match="cannot write"):
        model = convc.compile(lenet_file, threads=1)
    assert model(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


RACE = """
import os, sys, time, numpy as np
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
import convc
m = convc.compile(sys.argv[2], threads=1)
x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
np.save(sys.argv[3], m(x))
"""


@pytest.mark.slow
def test_two_processes_compile_the_same_model_at_once(cache, lenet_file, tmp_path):
    start = time.time() + 3.0  # both import convc first, then start compiling at the same instant
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(start), str(lenet_file), str(tmp_path / f"y{i}.npy")],
                              env=env(CONVC_CACHE_DIR=str(cache), CONVC_NO_CACHE=""), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "Warning" not in err, err
    np.testing.assert_array_equal(np.load(tmp_path / "y0.npy"), np.load(tmp_path / "y1.npy"))
    # (one entry, unless someone edits convc's sources meanwhile: they are part of the key)
    assert len(entries(cache)) >= 1
    assert not list(jc._entries(cache).glob("*.tmp")) and not list(jc._entries(cache).glob(".*"))  # no leftovers
    hit = convc.compile(lenet_file, threads=1)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(hit(x), np.load(tmp_path / "y0.npy"))


WARM = """
import sys, time
import convc
stages = []
t = time.perf_counter()
m = convc.compile(sys.argv[1], progress=stages.append)
print(f"{time.perf_counter() - t:.4f}", any(s.startswith("compile cache hit") for s in stages))
"""


@pytest.mark.slow
def test_resnet50_warm_compile_time_is_reported(cache, capsys):
    """Cold and warm compiles of light_resnet50, each in a fresh process (reported, not asserted).

    convc's own sources are part of the key: if someone edits them meanwhile, a "warm" run misses
    and compiles again; such runs are retried (and reported as cold)."""
    if not LIGHT.exists():
        pytest.skip("onnx's light_resnet50 is not installed")
    cold, warm = [], []
    for _ in range(6):
        done = subprocess.run([sys.executable, "-c", WARM, str(LIGHT)], capture_output=True, text=True, timeout=900,
                              env=env(CONVC_CACHE_DIR=str(cache), CONVC_NO_CACHE=""))
        assert done.returncode == 0, done.stderr
        seconds, hit = done.stdout.strip().splitlines()[-1].split()
        (warm if hit == "True" else cold).append(float(seconds))
        if len(warm) >= 2:
            break
    size = max(p.stat().st_size for p in entries(cache))
    report(capsys, f"light_resnet50: cold {', '.join(f'{t:.2f}' for t in cold)} s; warm "
                   f"{', '.join(f'{t:.3f}' for t in warm) or '(none: the sources kept changing)'} s "
                   f"(cache entry {size / 1e6:.1f} MB)")


# --- damaged, misplaced and planted entries ---------------------------------------------------

TRUNCATE_UNDER_A_WARM_MODEL = """
import os, sys
import numpy as np
import convc
from convc.codegen import cache as jc
convc.compile(sys.argv[1], threads=1)  # (in this process: convc's sources are part of the key)
stages = []
m = convc.compile(sys.argv[1], threads=1, progress=stages.append)
assert any(s.startswith("compile cache hit") for s in stages), stages
path, = jc._entries(jc.cache_dir()).glob("*.entry")
os.truncate(path, jc.HEADER_BYTES + 100)  # e.g. `convc cache --clear` in another process, a full disk
x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
np.save(sys.argv[2], m(x))
print("RAN")
"""


@pytest.mark.slow
def test_entry_truncated_under_a_warm_model(cache, lenet_file, lenet_jit, tmp_path):
    """A warm model mapped its entry: truncating the file under it killed the process (SIGBUS)."""
    done = subprocess.run([sys.executable, "-c", TRUNCATE_UNDER_A_WARM_MODEL, str(lenet_file), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300, env=env(CONVC_CACHE_DIR=str(cache),
                                                                              CONVC_NO_CACHE=""))
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), lenet_jit(x), rtol=1e-5, atol=1e-7)


@pytest.fixture
def two_models(cache, model_dir):
    """Two lenets (same graph, other weights) compiled into the cache: {name: (file, entry, alias, output)}."""
    from aot_helpers import write_model
    x = np.random.default_rng(3).standard_normal((1, 1, 28, 28)).astype(np.float32)
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        path = write_model(model_dir / f"bind_{name}.onnx", "lenet", batch=1, seed=seed)
        before_e, before_s = set(entries(cache)), set(jc._entries(cache).glob("src-*"))
        y = convc.compile(path, threads=1)(x)
        (entry,) = set(entries(cache)) - before_e
        (alias,) = set(jc._entries(cache).glob("src-*")) - before_s
        out[name] = (path, entry, alias, y)
    assert not np.allclose(out["a"][3], out["b"][3])
    return out, x


@pytest.mark.slow
def test_another_models_entry_is_not_served(two_models, cache):
    """An entry copied over another key's file used to serve the other model's code and weights."""
    models, x = two_models
    a_file, a_entry, _, a_out = models["a"]
    shutil.copyfile(models["b"][1], a_entry)
    with pytest.warns(jc.CacheWarning, match="holds the compiled code of another model"):
        again = convc.compile(a_file, threads=1)
    np.testing.assert_array_equal(again(x), a_out)
    with warnings.catch_warnings():  # rebuilt: a plain hit again
        warnings.simplefilter("error")
        stages: list[str] = []
        np.testing.assert_array_equal(convc.compile(a_file, threads=1, progress=stages.append)(x), a_out)
    assert any(s.startswith("compile cache hit") for s in stages)


@pytest.mark.slow
def test_an_alias_pointing_at_another_entry_is_not_served(two_models, cache):
    """A source alias naming another model's entry used to serve that model."""
    models, x = two_models
    a_file, _, a_alias, a_out = models["a"]
    a_alias.write_text(models["b"][1].stem)  # src-<a's bytes> -> b's key
    with pytest.warns(jc.CacheWarning, match="was not compiled from this source"):
        again = convc.compile(a_file, threads=1)
    np.testing.assert_array_equal(again(x), a_out)
    stages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convc.compile(a_file, threads=1, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages) and "code generation" not in stages


@pytest.mark.slow
def test_a_graph_key_hit_binds_a_new_source_alias(cache, lenet_file):
    """Compiled first from a Graph (no source alias), then from the file: the alias is added inside the entry."""
    from convc.compiler import compile_graph, load_graph
    compile_graph(load_graph(str(lenet_file)), threads=1)
    convc.compile(lenet_file, threads=1)  # graph-key hit: binds the file's alias
    (entry,) = entries(cache)
    (alias,) = jc._entries(cache).glob("src-*")
    art = jc.lookup(cache, entry.stem)
    binding = art.meta["cache"]
    assert binding["key"] == entry.stem and binding["sources"] == [alias.name[4:]]
    assert time.time() - 600 < binding["created"] <= time.time()  # kept from the first store
    stages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convc.compile(lenet_file, threads=1, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages)


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another owner"])
@pytest.mark.slow
def test_a_cache_dir_others_control_is_not_used(cache, lenet_file, how):
    """A CONVC_CACHE_DIR that another user owns, or can write to, used to be trusted: its machine code ran."""
    warm = convc.compile(lenet_file, threads=1)
    assert stat.S_IMODE(os.stat(jc._entries(cache)).st_mode) == 0o700
    if how == "another owner":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(cache, 12345, 12345)
        match = "owned by another user"
    else:
        os.chmod(cache, 0o777 if how == "world-writable" else 0o770)
        match = "can be written by " + ("everyone" if how == "world-writable" else "its group")
    before = {p: p.stat().st_mtime_ns for p in jc._entries(cache).iterdir()}
    stages: list[str] = []
    with pytest.warns(jc.CacheWarning, match=match):
        model = convc.compile(lenet_file, threads=1, progress=stages.append)
    assert not any(s.startswith("compile cache hit") for s in stages) and "code generation" in stages
    assert {p: p.stat().st_mtime_ns for p in jc._entries(cache).iterdir()} == before  # nothing written either
    x, = inputs_for(model)
    np.testing.assert_array_equal(model(x), warm(x))


@pytest.mark.slow
def test_an_unsafe_entries_folder_is_not_used(cache, lenet_file):
    convc.compile(lenet_file, threads=1)
    os.chmod(jc._entries(cache), 0o777)
    with pytest.warns(jc.CacheWarning, match="can be written by everyone"):
        convc.compile(lenet_file, threads=1)


def test_a_sticky_shared_cache_root_is_fine(cache, lenet_file):
    """Like /tmp: others may add files to the root but not touch v2/, which is ours and private."""
    cache.mkdir()
    os.chmod(cache, 0o1777)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convc.compile(lenet_file, threads=1)
        stages: list[str] = []
        convc.compile(lenet_file, threads=1, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages)


# --- pickled JIT models: checked like cache entries --------------------------------------------

def reseal(entry: bytes, edit) -> bytes:
    """An entry whose JSON ``edit(meta)`` changed, with a valid checksum again (whole, but lying)."""
    import hashlib
    import json
    magic, n_meta, n_obj, n_blob, _ = jc._HEADER.unpack(entry[:jc._HEADER.size])
    body = entry[jc.HEADER_BYTES:]
    meta = json.loads(body[:n_meta])
    edit(meta)
    mb = json.dumps(meta).encode()
    new_body = mb + b"\0" * jc._pad(len(mb)) + body[n_meta + jc._pad(n_meta):]
    header = jc._HEADER.pack(magic, len(mb), n_obj, n_blob, hashlib.sha256(new_body).digest())
    return header.ljust(jc.HEADER_BYTES, b"\0") + new_body


def test_damaged_pickles_of_jit_models_are_refused(lenet_jit):
    """A pickled JIT model whose weight array was cut short used to read out of bounds."""
    restore, (state, threads) = lenet_jit.__reduce__()
    x, = inputs_for(lenet_jit, seed=2)
    np.testing.assert_array_equal(restore(state, threads)(x), lenet_jit(x))
    entry = state["entry"]
    for bad in (entry[:-4096], entry[:len(entry) // 2], entry + b"\0" * 64, b""):
        with pytest.raises(convc.LoadError, match="damaged"):
            restore(dict(state, entry=bad), threads)
    flipped = bytearray(entry)
    flipped[-5000] ^= 0x10
    with pytest.raises(convc.LoadError, match="checksum mismatch"):
        restore(dict(state, entry=bytes(flipped)), threads)

    def grow_last_constant(meta):
        last = [item for item in meta["constant_layout"] if item is not None][-1]
        last[1][0] *= 1000
    with pytest.raises(convc.LoadError, match="lies outside the .* bytes of weights"):
        restore(dict(state, entry=reseal(entry, grow_last_constant)), threads)

    def object_dtype(meta):
        next(item for item in meta["constant_layout"] if item is not None)[2] = "|O"
    with pytest.raises(convc.LoadError, match="dtype object"):
        restore(dict(state, entry=reseal(entry, object_dtype)), threads)
    # the format of older convc versions (unchecked arrays) is refused, whatever its arrays
    art = lenet_jit._artifact
    legacy = {"kind": "jit", "meta": art.meta, "obj": art.obj,
              "constants": [None if c is None else c.reshape(-1)[:3] for c in art.constants]}
    with pytest.raises(convc.LoadError, match="pickled by an older convc"):
        restore(legacy, threads)


def test_a_warm_compile_reads_the_input_signature_from_the_entry(cache, tmp_path):
    """The second compile of an ONNX file takes its inputs' declared dimensions from the cache
    entry: it neither imports the onnx package (about a second) nor parses the model, and the
    model still knows its symbolic batch (get_inputs, a new batch compiled on first use)."""
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], "symbolic_batch",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ("N", 1, 9, 7))],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "symbolic_batch.onnx"
    onnx.save(model, path)
    convc.compile(path)
    script = (
        "import sys, numpy as np, convc\n"
        f"m = convc.compile({str(path)!r}, progress=print)\n"
        "print('onnx imported:', 'onnx' in sys.modules)\n"
        "print('signature:', {n: list(d) for n, d in m._signature.items()})\n"
        "print('batch 3:', m(np.ones((3, 1, 9, 7), np.float32)).shape)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CONVC_CACHE_DIR": str(cache), "CONVC_NO_CACHE": ""})
    assert done.returncode == 0, done.stderr
    assert "compile cache hit" in done.stdout and "onnx imported: False" in done.stdout, done.stdout
    assert "signature: {'x': ['N', 1, 9, 7]}" in done.stdout and "batch 3: (3, 4, 9, 7)" in done.stdout, done.stdout
