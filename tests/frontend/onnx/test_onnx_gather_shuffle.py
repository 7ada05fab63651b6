"""Gather with constant indices that transpose the axis seen as a x b (ShuffleNet's channel shuffle written as a
Gather): one Reshape, Transpose, Reshape (a copy kernel), not a Slice per index joined by a Concat; compiled at
batch 16 and odd sizes, 1 and 2 threads, against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import make_model, op_kinds, run_onnx

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


def shuffle(n: int, groups: int) -> np.ndarray:
    """ShuffleNet's channel order: view (groups, n / groups), transpose, flatten."""
    return np.arange(n).reshape(groups, n // groups).T.reshape(-1)


def gather_model(shape, axis: int, indices: np.ndarray):
    return make_model([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], {"x": shape}, ["y"],
                      {"i": indices}, opset=13)


CASES = [((16, 24, 29, 23), 1, shuffle(24, 2)),   # channel shuffle, 2 groups
         ((16, 24, 29, 23), 1, shuffle(24, 3)),   # 3 groups
         ((16, 7, 29, 24), 3, shuffle(24, 4)),    # the last axis
         ((16, 24, 29, 23), 1, shuffle(24, 2).reshape(2, 12))]  # 2-D indices: the view adds an axis


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,axis,indices", CASES, ids=["g2", "g3", "last-axis", "2d-indices"])
def test_a_transposing_gather_is_one_transpose(shape, axis, indices, threads):
    m = gather_model(shape, axis, indices.astype(np.int64))
    kinds = op_kinds(import_onnx(m))
    assert kinds == [OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.RESHAPE]
    x = np.random.default_rng(threads).standard_normal(shape).astype(np.float32)
    got = convc.compile(m, threads=threads, cache=False).run({"x": x})["y"]
    np.testing.assert_array_equal(got, run_onnx(m, {"x": x})["y"])  # a copy: bit for bit


@pytest.mark.parametrize("indices", [np.arange(8)[::-1], np.roll(np.arange(8), 3), shuffle(8, 2)[:-1]],
                         ids=["reversed", "rotated", "not-every-channel"])
def test_other_permutations_still_gather_by_runs(indices):
    m = gather_model((16, 8, 9, 7), 1, indices.astype(np.int64))
    kinds = op_kinds(import_onnx(m))
    assert OpKind.TRANSPOSE not in kinds and (OpKind.SLICE in kinds or OpKind.CONCAT in kinds)
    x = np.random.default_rng(0).standard_normal((16, 8, 9, 7)).astype(np.float32)
    np.testing.assert_array_equal(convc.compile(m, threads=1, cache=False).run({"x": x})["y"],
                                  run_onnx(m, {"x": x})["y"])
