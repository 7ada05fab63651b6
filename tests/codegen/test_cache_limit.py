"""The compile cache stays under its size limit (least recently used out first), and `convc cache`
lists and prunes it."""
from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.cli import main
from convc.codegen import cache, cache_limit, kernel_cache
from convc.codegen.artifacts import CacheWarning


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.delenv("CONVC_CACHE_MAX_BYTES", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def conv_net(name: str, channels: int) -> onnx.ModelProto:
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 19, 17))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def fake_file(path, size: int, age: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(b"\0" * size)
    t = time.time() - age
    os.utime(path, (t, t))


@pytest.mark.parametrize("text,value", [("4G", 4_000_000_000), ("500M", 500_000_000), ("4GiB", 4 << 30),
                                        ("1.5k", 1500), ("123", 123), ("2 GB", 2_000_000_000)])
def test_sizes_parse(text, value):
    assert cache_limit.parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "4X", "", "G"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        cache_limit.parse_size(text)


def test_a_bad_limit_warns_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_MAX_BYTES", "lots")
    with pytest.warns(CacheWarning, match="CONVC_CACHE_MAX_BYTES"):
        assert cache_limit.max_bytes() == cache_limit.DEFAULT_MAX_BYTES
    monkeypatch.setenv("CONVC_CACHE_MAX_BYTES", "250M")
    assert cache_limit.max_bytes() == 250_000_000


def test_prune_removes_the_least_recently_used_first(root):
    entries, kernels = cache._entries(root), kernel_cache.folder(root)
    fake_file(entries / "old.entry", 1000, age=300)
    fake_file(entries / "src-old", 64, age=300)
    (entries / "src-old").write_text("old")  # its alias: removed with it
    fake_file(kernels / "k_old.o", 1000, age=200)
    fake_file(entries / "recent.entry", 1000, age=100)
    fake_file(kernels / "k_recent.o", 1000, age=10)
    removed, freed = cache_limit.prune(root, limit=2500)
    left = {p.name for p in entries.iterdir()} | {p.name for p in kernels.iterdir()}
    assert left == {"recent.entry", "k_recent.o"}
    assert removed == 3 and freed == 2000 + len("old")


def test_prune_keeps_the_model_used_last_even_over_the_limit(root):
    fake_file(cache._entries(root) / "big.entry", 5000, age=1)
    fake_file(kernel_cache.folder(root) / "k.o", 100, age=2)
    cache_limit.prune(root, limit=10)
    assert (cache._entries(root) / "big.entry").exists()
    assert not (kernel_cache.folder(root) / "k.o").exists()


def test_every_compile_keeps_the_cache_under_its_limit_and_hits_refresh_their_entry(root, monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 3, 19, 17)).astype(np.float32)
    a, b = conv_net("net_a", 8), conv_net("net_b", 24)
    convc.compile(a)
    one = cache_limit.usage(root)[1]
    monkeypatch.setenv("CONVC_CACHE_MAX_BYTES", str(int(one * 1.5)))  # room for about one model
    path_a = next(cache._entries(root).glob("*.entry"))
    t = time.time() - 1000
    os.utime(path_a, (t, t))
    lines = []
    model_a = convc.compile(a, progress=lines.append)  # a hit: its entry becomes the most recent
    assert any("compile cache hit" in line for line in lines)
    assert path_a.stat().st_mtime > t + 500
    convc.compile(b)  # over the limit now: what was used least recently goes
    assert cache_limit.usage(root)[1] <= int(one * 1.5)
    names = {cache_limit._describe(p)[0] for p in cache._entries(root).glob("*.entry")}
    assert names == {"net_b"}
    lines.clear()
    again = convc.compile(a, progress=lines.append)  # evicted: compiled again, correctly
    assert any("compile cache miss" in line for line in lines)
    np.testing.assert_array_equal(again(x), model_a(x))


def test_cache_command_lists_and_prunes(root, capsys):
    convc.compile(conv_net("listed_net", 8))
    assert main(["cache", "--list"]) == 0
    out = capsys.readouterr().out
    assert "listed_net" in out and "x 2x3x19x17" in out and "kernel objects:" in out and "of 4.0 GB" in out
    assert main(["cache", "--prune", "--max-size", "1K"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "1 compiled model(s)" in out and "limit 1.0 kB" in out
    assert kernel_cache.files(root) == []  # the model used last stays, its kernel objects go first
    assert main(["cache", "--max-size", "1G"]) == 2
    assert "--max-size goes with --prune" in capsys.readouterr().err
    assert main(["cache", "--prune", "--max-size", "lots"]) == 2
    assert "is not a size" in capsys.readouterr().err
    assert main(["cache", "--clear"]) == 0
    assert cache_limit.usage(root) == (0, 0) and kernel_cache.files(root) == []


def test_cache_list_escapes_names_from_the_model(root, capsys):
    """A graph or input name is data: a terminal escape in it is printed escaped, not sent raw."""
    m = conv_net("net\x1b[2J\x07", 8)
    m.graph.input[0].name = "x\x1b[31m"
    m.graph.node[0].input[0] = "x\x1b[31m"
    convc.compile(m)
    assert main(["cache", "--list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "net\\x1b[2J\\x07" in out and "x\\x1b[31m 2x3x19x17" in out
