"""Flatten, Reshape, Concat, Transpose, Pad, StridedSlice and Split; views that are graph outputs are copied out."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import RTOL, assert_close, check_op
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import DropoutAttrs
from convc.ops.shape import (ConcatAttrs, FlattenAttrs, PadAttrs, ReshapeAttrs, SplitAttrs, StridedSliceAttrs,
                             TransposeAttrs)
from convc.reference import run_reference

FLATTEN = [((2, 3, 4), a) for a in range(4)] + [((2, 3, 4, 5), a) for a in range(5)]


@pytest.mark.parametrize("shape,axis", FLATTEN, ids=[f"rank{len(s)}-axis{a}" for s, a in FLATTEN])
def test_flatten(rng, shape, axis):
    check_op(OpKind.FLATTEN, FlattenAttrs(axis), [rng.standard_normal(shape).astype(np.float32)])


@pytest.mark.parametrize("shape,target", [
    ((2, 3, 4), (6, 4)),
    ((2, 3, 4), (24,)),
    ((2, 3, 4), (4, 3, 2)),
    ((2, 3, 4), (1, 24, 1)),
    ((2, 3, 4, 5), (2, 60)),
    ((7,), (7, 1, 1)),
], ids=lambda s: str(s).replace(" ", ""))
def test_reshape(rng, shape, target):
    check_op(OpKind.RESHAPE, ReshapeAttrs(target), [rng.standard_normal(shape).astype(np.float32)])


CONCAT = [(rank, axis, n) for rank in (3, 4) for axis in range(rank) for n in (1, 2, 3)]


@pytest.mark.parametrize("rank,axis,n", CONCAT, ids=[f"rank{r}-axis{a}-{n}in" for r, a, n in CONCAT])
def test_concat(rng, rank, axis, n):
    base = (2, 3, 4, 5)[:rank]
    sizes = (2, 1, 3)[:n]  # different sizes along the axis
    xs = [rng.standard_normal(base[:axis] + (s,) + base[axis + 1:]).astype(np.float32) for s in sizes]
    check_op(OpKind.CONCAT, ConcatAttrs(axis), xs, const=frozenset({1}))


def test_concat_same_tensor_twice(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    g = Graph("concat_twice")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_op(OpKind.CONCAT, ConcatAttrs(1), ["x", "x"], ["y"])
    g.outputs = ["y"]
    g.verify()
    np.testing.assert_array_equal(convc.compile(g).run({"x": x})["y"], np.concatenate([x, x], axis=1))


VIEWS = [
    (OpKind.RESHAPE, ReshapeAttrs((6, 20))),
    (OpKind.FLATTEN, FlattenAttrs(2)),
    (OpKind.IDENTITY, NoAttrs()),
    (OpKind.DROPOUT, DropoutAttrs(0.5)),
]


def compile_and_compare(g: Graph, feeds: dict[str, np.ndarray], exact: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Compare every graph output with run_reference; the ``exact`` ones (pure data movement) bit for bit."""
    g.verify()
    got = convc.compile(g).run(feeds)
    want = run_reference(g, feeds)
    assert list(got) == list(want)
    for name in want:
        assert_close(got[name], want[name], RTOL, name)
        if name in exact:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    return got


@pytest.mark.parametrize("kind,attrs", VIEWS, ids=[k.value for k, _ in VIEWS])
def test_view_graph_output_is_copied(rng, kind, attrs):
    """Inside a graph a view aliases its input; as a graph output its bytes must reach the caller's array.

    x -> Relu -> view -> y (output), and view -> Sigmoid -> z (output): the view output is both a graph
    output and read by a later op."""
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    g = Graph("view_out")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    r = g.add_op(OpKind.RELU, NoAttrs(), ["x"])
    g.add_op(kind, attrs, r.outputs, ["y"])
    g.add_op(OpKind.SIGMOID, NoAttrs(), ["y"], ["z"])
    g.outputs = ["y", "z"]
    got = compile_and_compare(g, {"x": x}, exact=("y",))
    assert np.any(got["y"] != 0)  # not an untouched output buffer


def test_view_chain_graph_output_is_copied(rng):
    """Relu -> Reshape -> Identity -> Dropout -> Flatten: every view aliases the Relu output but the last."""
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    g = Graph("view_chain")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    t = g.add_op(OpKind.RELU, NoAttrs(), ["x"]).outputs
    t = g.add_op(OpKind.RESHAPE, ReshapeAttrs((6, 4, 5)), t).outputs
    t = g.add_op(OpKind.IDENTITY, NoAttrs(), t).outputs
    t = g.add_op(OpKind.DROPOUT, DropoutAttrs(0.1), t).outputs
    g.add_op(OpKind.FLATTEN, FlattenAttrs(1), t, ["y"])
    g.outputs = ["y"]
    compile_and_compare(g, {"x": x}, exact=("y",))


def test_view_of_graph_input_and_of_constant(rng):
    """Views whose root is a graph input or a constant, not the arena."""
    x = rng.standard_normal((2, 6)).astype(np.float32)
    c = rng.standard_normal((3, 4)).astype(np.float32)
    g = Graph("view_roots")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_constant("c", c)
    g.add_op(OpKind.RESHAPE, ReshapeAttrs((3, 4)), ["x"], ["y"])
    g.add_op(OpKind.FLATTEN, FlattenAttrs(0), ["c"], ["z"])
    g.outputs = ["y", "z"]
    compile_and_compare(g, {"x": x}, exact=("y", "z"))


# --- Transpose, Pad, StridedSlice, Split ---------------------------------------------------------
@pytest.mark.parametrize("shape,perm", [
    ((2, 3, 4, 5), (0, 1, 2, 3)),
    ((2, 3, 4, 5), (0, 2, 3, 1)),   # NCHW -> NHWC
    ((2, 3, 4, 5), (0, 3, 1, 2)),   # NHWC -> NCHW
    ((2, 3, 4, 5), (3, 2, 1, 0)),
    ((2, 3, 4, 5), (1, 0, 2, 3)),   # H*W stays contiguous: one merged inner loop
    ((1, 3, 1, 5), (2, 0, 3, 1)),   # size-1 axes
    ((1, 2, 3, 2, 3, 2), (0, 1, 4, 2, 5, 3)),  # ShuffleNet / PixelShuffle rearrangement
    ((7, 11), (1, 0)),
], ids=lambda v: str(v).replace(" ", ""))
def test_transpose(rng, shape, perm):
    check_op(OpKind.TRANSPOSE, TransposeAttrs(perm), [rng.standard_normal(shape).astype(np.float32)])


@pytest.mark.parametrize("mode", PadAttrs.MODES)
@pytest.mark.parametrize("pads", [
    (0, 0, 1, 2, 0, 0, 3, 1),
    (0, 0, 0, 3, 0, 0, 0, 0),       # causal: left padding of the last axis only
    (1, 0, 0, 0, 0, 2, 0, 0),       # batch and channel axes too
    (0, 0, -1, 2, 0, 0, 1, -2),     # negative pads crop
], ids=["hw", "causal", "nc", "crop"])
def test_pad(rng, mode, pads):
    check_op(OpKind.PAD, PadAttrs(pads, mode, 1.5), [rng.standard_normal((2, 3, 5, 6)).astype(np.float32)])


def test_pad_1d_reflect_is_numpy_reflect():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    y = check_op(OpKind.PAD, PadAttrs((0, 0, 2, 0, 0, 3), "reflect"), [x])
    np.testing.assert_array_equal(y.reshape(-1), [2, 1, 0, 1, 2, 3, 4, 3, 2, 1])


@pytest.mark.parametrize("starts,steps,shape", [
    ((0, 1, 1, 0), (1, 1, 2, 3), (2, 2, 2, 2)),
    ((1, 2, 4, 6), (-1, -1, -2, -3), (2, 3, 3, 3)),   # every axis backwards
    ((0, 0, 0, 0), (1, 1, 1, 7), (2, 3, 5, 1)),
    ((0, 2, 0, 0), (1, 1, 1, 1), (2, 1, 5, 7)),
], ids=["forward", "backward", "one-column", "one-channel"])
def test_strided_slice(rng, starts, steps, shape):
    check_op(OpKind.STRIDED_SLICE, StridedSliceAttrs(starts, steps, shape),
             [rng.standard_normal((2, 3, 5, 7)).astype(np.float32)])


def test_strided_slice_out_of_range_is_an_error():
    g = Graph("slice")
    g.add_tensor("x", (4, 5), np.float32, TensorKind.INPUT)
    with pytest.raises(convc.GraphError, match="reads outside shape"):
        g.add_op(OpKind.STRIDED_SLICE, StridedSliceAttrs((0, 1), (1, 2), (4, 3)), ["x"])


@pytest.mark.parametrize("shape,axis,sizes", [
    ((2, 6, 4), 1, (1, 2, 3)),
    ((2, 6, 4), 0, (1, 1)),
    ((2, 6, 4), 2, (2, 2)),
    ((5, 6), 1, (3, 3)),            # GLU halves
    ((10,), 0, (3, 3, 4)),
], ids=lambda v: str(v).replace(" ", ""))
def test_split(rng, shape, axis, sizes):
    """Split has one output per part: compiled outputs vs numpy and onnxruntime."""
    x = rng.standard_normal(shape).astype(np.float32)
    g = Graph("split")
    g.add_tensor("x", shape, np.float32, TensorKind.INPUT)
    names = [f"y{i}" for i in range(len(sizes))]
    g.add_op(OpKind.SPLIT, SplitAttrs(axis, sizes), ["x"], names)
    g.outputs = names
    g.verify()
    got = convc.compile(g).run({"x": x})
    expected = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    node = helper.make_node("Split", ["x", "sizes"], names, axis=axis)
    model = helper.make_model(helper.make_graph(
        [node], "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]), opset_imports=[helper.make_opsetid("", 18)])
    ort_out = run_onnxruntime_all(model, {"x": x})
    for name, e, o in zip(names, expected, ort_out):
        np.testing.assert_array_equal(got[name], e)
        np.testing.assert_array_equal(got[name], o)


def run_onnxruntime_all(model, feeds):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
