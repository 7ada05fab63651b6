"""The compile cache's plan key hashes every constant through its own SHA-256, on two threads for a
large plan: the same digests either way, and any change to a constant's bytes, dtype or shape
changes the key."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from convc.codegen import cache_key
from convc.frontend.onnx import import_onnx
from convc.passes.pipeline import pipeline


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    big = rng.standard_normal((512, 1031)).astype(np.float32)
    return [big, big[:, ::2], big.T, np.zeros((0, 4), np.float32), np.arange(7, dtype=np.int64),
            rng.standard_normal((300, 300)), np.float32(2.5) * np.ones((3, 1, 1), np.float32),
            rng.integers(-128, 127, (4096, 33)).astype(np.int8), np.array(1.0, np.float16)]


def _expected(a: np.ndarray) -> bytes:
    c = np.ascontiguousarray(a)
    return hashlib.sha256(f"nd{c.dtype.str}{c.shape}".encode() + c.tobytes()).digest()


@pytest.mark.parametrize("threshold", [0, 1 << 40])
def test_array_digests_are_the_same_on_one_thread_and_two(monkeypatch, threshold):
    monkeypatch.setattr(cache_key, "PARALLEL_HASH_BYTES", threshold)  # 0: every call on two threads
    arrays = _arrays()
    assert cache_key._array_digests(arrays) == [_expected(a) for a in arrays]


def _model(w: np.ndarray) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv], "g", [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_the_plan_key_follows_every_constant(monkeypatch):
    monkeypatch.setattr(cache_key, "PARALLEL_HASH_BYTES", 0)
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    env = {"threads": 1}

    def key(weights: np.ndarray) -> str:
        return cache_key.graph_key(pipeline(import_onnx(_model(weights))), env)
    base = key(w)
    assert key(w.copy()) == base
    flipped = w.copy()
    flipped.view(np.uint32)[5, 2, 1, 0] ^= 1  # one bit of one weight
    assert key(flipped) != base
    assert key(w[::-1].copy()) != base  # the same values, in another order
    monkeypatch.setattr(cache_key, "PARALLEL_HASH_BYTES", 1 << 40)
    assert key(w) == base  # on one thread: the same key
