"""A training library's two-call step (convc_compute_gradients, the gradient buffer,
convc_apply_gradients) driven through ctypes: bit for bit convc_train_step's, the buffer is what the
update reads, and accumulation."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import convc
from convc.compiler import build_training_library

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_gradient_api import batch, small_cnn  # noqa: E402

BATCH = 16


@pytest.fixture(scope="module")
def split_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    onnx.save(small_cnn(True), d / "net.onnx")
    res = build_training_library(str(d / "net.onnx"), d / "train.so", batch=BATCH, optimizer="momentum", lr=0.05)
    return res


class Split:
    """ctypes bindings of the two-call step on a LoadedTrainer's context."""

    def __init__(self, trainer):
        lib, self.ctx = trainer._lib, trainer._ctx
        self.compute = lib.convc_compute_gradients
        self.compute.restype, self.compute.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                                     ctypes.POINTER(ctypes.c_float), ctypes.c_int]
        self.apply = lib.convc_apply_gradients
        self.apply.restype, self.apply.argtypes = ctypes.c_int, [ctypes.c_void_p]
        lib.convc_gradients.restype, lib.convc_gradients.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        lib.convc_gradients_size.restype = ctypes.c_int64
        lib.convc_gradient_offset.restype, lib.convc_gradient_offset.argtypes = ctypes.c_int64, [ctypes.c_int]
        n = lib.convc_gradients_size()
        self.gradients = np.frombuffer((ctypes.c_float * n).from_address(lib.convc_gradients(self.ctx)), np.float32)
        lib.convc_state_name.restype, lib.convc_state_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
        self.offsets = {lib.convc_state_name(i).decode(): lib.convc_gradient_offset(i)
                        for i in range(lib.convc_num_state())}

    def gradients_step(self, x, y, accumulate: bool = False) -> float:
        loss = ctypes.c_float()
        y = np.ascontiguousarray(y, np.int64)
        assert self.compute(self.ctx, x.ctypes.data, y.ctypes.data, ctypes.byref(loss), int(accumulate)) == 0
        return loss.value


def test_split_abi_equals_train_step_and_the_trainer(split_lib):
    """Three steps through compute + apply equal three convc_train_step calls bit for bit (a net
    with BatchNorm, SGD with momentum); convc_gradient_offset names every parameter's slice."""
    a, b = convc.load(split_lib.output), convc.load(split_lib.output)
    s = Split(b)
    params = a._training["params"]
    assert sorted(k for k, v in s.offsets.items() if v >= 0) == sorted(params)
    assert s.offsets[a._training["lr_name"]] == -1
    assert s.apply(b._ctx) == 2  # nothing computed yet: nothing applied
    for seed in range(3):
        x, y = batch(BATCH, seed)
        assert s.gradients_step(x, y) == a.step(x, y)
        assert s.apply(s.ctx) == 0
    assert a.steps_done == b.steps_done == 3
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        np.testing.assert_array_equal(sb[name], sa[name], err_msg=name)



def test_split_abi_buffer_is_what_the_update_reads(split_lib):
    b = convc.load(split_lib.output)
    s = Split(b)
    before = b.state_dict()
    x, y = batch(BATCH, 3)
    s.gradients_step(x, y)
    s.gradients[...] = 0.0  # momentum's first step with a zero gradient: no weight moves
    assert s.apply(s.ctx) == 0
    after = b.state_dict()
    for p in b._training["params"]:
        np.testing.assert_array_equal(after[p], before[p])
    assert b.steps_done == 1
    s.gradients_step(x, y)
    s.gradients[5] = np.inf
    assert s.apply(s.ctx) == 2 and b.steps_done == 1  # not finite: nothing applied
    for n, v in b.state_dict().items():
        np.testing.assert_array_equal(v, after[n], err_msg=n)


def test_split_abi_accumulates(split_lib):
    b = convc.load(split_lib.output)
    s = Split(b)
    x, y = batch(BATCH, 4)
    s.gradients_step(x, y)
    once = s.gradients.copy()
    s.gradients_step(x, y, accumulate=True)
    np.testing.assert_array_equal(s.gradients, once + once)
    s.gradients_step(x, y)  # without accumulate: a new sum
    np.testing.assert_array_equal(s.gradients, once)
