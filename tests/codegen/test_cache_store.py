"""A large model's compile cache entry is written after the compile returns, on a thread of its own:
the entry is complete for the next process (the interpreter waits for the thread at exit) and for
the next compile in this process (lookups wait for it); a small one is written before."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.codegen import cache
from convc.codegen.artifacts import read_aligned

X = np.random.default_rng(1).standard_normal((2, 3, 19, 17)).astype(np.float32)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.delenv("CONVC_CACHE_MAX_BYTES", raising=False)
    monkeypatch.delenv("CONVC_CHECK_ARENA", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def conv_net(channels: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "stored_later", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def entry_files(root) -> list:
    """The entries on disk, read without waiting for this process's writes (cache._entries waits)."""
    return sorted((root / f"v{cache.FORMAT}").glob("*.entry"))


def test_a_large_entry_is_written_after_the_compile_returns(root, monkeypatch):
    monkeypatch.setattr(cache, "BACKGROUND_STORE_BYTES", 0)  # every entry counts as large
    release, real_store = threading.Event(), cache.store

    def held_store(*a, **k):
        assert release.wait(30)
        return real_store(*a, **k)
    monkeypatch.setattr(cache, "store", held_store)
    stages: list[str] = []
    model = convc.compile(conv_net(), progress=stages.append)
    y = model.run({"x": X})["y"]  # the first result comes while the entry is still being written
    assert not entry_files(root)
    assert any(s.startswith("compile cache: storing") for s in stages)
    release.set()
    again: list[str] = []
    warm = convc.compile(conv_net(), progress=again.append)  # its look-up waits for the write
    assert any(s.startswith("compile cache hit") for s in again), again
    assert len(entry_files(root)) == 1
    np.testing.assert_array_equal(warm.run({"x": X})["y"], y)


def test_another_model_does_not_wait_for_this_ones_entry(root, monkeypatch):
    """A look-up waits only for the write of its own key or source alias: the next model's compile
    (other weights) runs while this one's entry is still being written."""
    monkeypatch.setattr(cache, "BACKGROUND_STORE_BYTES", 0)
    release, real_store = threading.Event(), cache.store

    def held_store(*a, **k):
        if a[1] == held[0]:
            assert release.wait(60)
        return real_store(*a, **k)
    held = [None]
    real_background = cache.store_in_background

    def first_key(names, write):
        held[0] = held[0] or names[0]
        return real_background(names, write)
    monkeypatch.setattr(cache, "store", held_store)
    monkeypatch.setattr(cache, "store_in_background", first_key)
    try:
        convc.compile(conv_net(8))
        other = threading.Thread(target=lambda: convc.compile(conv_net(16)))
        other.start()
        other.join(60)
        assert not other.is_alive(), "the second model's compile waited for the first one's entry"
        assert len(entry_files(root)) == 1  # the second model's; the first one's is still held
    finally:
        release.set()
        cache.wait_for_stores()
    assert len(entry_files(root)) == 2


def test_a_small_entry_is_written_before_the_compile_returns(root, monkeypatch):
    started = []
    monkeypatch.setattr(cache, "store_in_background", lambda *a: started.append(a))
    convc.compile(conv_net())
    assert not started and len(entry_files(root)) == 1  # 8x3x3x3 weights: far under the threshold


WRITER = """
import os, sys, time
import numpy as np
import convc
from convc.codegen import cache
from convc.codegen.artifacts import read_aligned
cache.BACKGROUND_STORE_BYTES = 0
real_store = cache.store
def slow_store(*a, **k):
    time.sleep(1.0)  # the process has its result and is leaving long before the entry is written
    return real_store(*a, **k)
cache.store = slow_store
m = convc.compile(sys.argv[1])
np.save(sys.argv[2], m.run({"x": np.load(sys.argv[3])})["y"])
folder = os.path.join(os.environ["CONVC_CACHE_DIR"], f"v{cache.FORMAT}")  # (cache._entries would wait)
print("entries when the result was ready:", sum(n.endswith(".entry") for n in os.listdir(folder)) if os.path.isdir(folder) else 0)
"""


@pytest.mark.slow
def test_an_entry_written_in_the_background_is_complete_for_the_next_process(root, tmp_path):
    path, out, x = tmp_path / "net.onnx", tmp_path / "y.npy", tmp_path / "x.npy"
    onnx.save(conv_net(16), path)
    np.save(x, X)
    done = subprocess.run([sys.executable, "-c", WRITER, str(path), str(out), str(x)], capture_output=True,
                          text=True, env={**os.environ, "CONVC_CACHE_DIR": str(root)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "entries when the result was ready: 0" in done.stdout, done.stdout
    (entry,) = entry_files(root)  # the interpreter waited for the writer at exit
    assert not list(entry.parent.glob(".*.tmp"))
    meta, _, constants = cache.read_entry(read_aligned(entry))  # complete: the checksum holds
    assert meta["cache"]["sources"]  # bound to the file's alias too
    stages: list[str] = []
    t = time.process_time()
    warm = convc.compile(path, progress=stages.append)
    assert any(s.startswith("compile cache hit") for s in stages), (stages, time.process_time() - t)
    np.testing.assert_array_equal(warm.run({"x": X})["y"], np.load(out))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_background_write_does_not_wait_for_it(root, monkeypatch):
    """A process forked while an entry is being written (a data loader's workers) has no writer
    thread: reading the cache there must not wait for one, nor for a lock its parent held."""
    from convc.codegen import entry
    monkeypatch.setattr(cache, "BACKGROUND_STORE_BYTES", 0)
    release, real_store = threading.Event(), cache.store

    def held_store(*a, **k):
        assert release.wait(30)
        return real_store(*a, **k)
    monkeypatch.setattr(cache, "store", held_store)
    convc.compile(conv_net())
    with entry._writers_lock:  # held at the fork, as a writer finishing at that moment would
        pid = os.fork()
        if pid == 0:
            try:
                entry.wait_for_stores()
                cache._entries(root)
            finally:
                os._exit(0)
    try:
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        if done == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done != (0, 0), "the forked child waited for its parent's writer"
        assert os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == 0
    finally:
        release.set()
        entry.wait_for_stores()
