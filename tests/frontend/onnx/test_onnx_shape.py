"""Flatten, Reshape, Concat, Transpose, Squeeze/Unsqueeze, Split, Slice and Pad on run-time tensors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_import_helpers import INT64, check_model, make_model, op_kinds

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.ops.shape import PadAttrs, SplitAttrs


@pytest.mark.parametrize("axis,expected", [(0, 0), (1, 1), (2, 2), (4, 4), (-1, 3), (-3, 1), (-4, 0)])
def test_flatten(axis, expected):
    node = helper.make_node("Flatten", ["X"], ["Y"], name="flat", axis=axis)
    graph = check_model(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], opset=13))
    assert graph.op("flat").attrs.axis == expected


def test_flatten_axis_out_of_range():
    node = helper.make_node("Flatten", ["X"], ["Y"], name="flat", axis=5)
    with pytest.raises(ModelImportError, match=r"node 'flat' \(Flatten, opset 13\): axis=5 is out of range"):
        import_onnx(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], opset=13))


RESHAPES = [([6, -1], 0, (6, 20)), ([0, 0, -1], 0, (2, 3, 20)), ([-1], 0, (120,)), ([0, 12, -1, 1], 0, (2, 12, 5, 1)),
            ([2, 3, 20], 1, (2, 3, 20)), ([2, -1, 5], 1, (2, 12, 5))]


# allowzero exists from opset 14 on
@pytest.mark.parametrize("shape,allowzero,expected,opset", [
    (shape, allowzero, expected, opset) for shape, allowzero, expected in RESHAPES for opset in (7, 13, 14, 21)
    if opset >= 14 or not allowzero])
def test_reshape(shape, allowzero, expected, opset):
    attrs = {"allowzero": allowzero} if opset >= 14 else {}
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape", **attrs)
    model = make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"shape": np.array(shape, np.int64)}, opset=opset)
    graph = check_model(model)
    assert graph.op("reshape").attrs.shape == expected


def test_reshape_allowzero_keeps_a_zero_dimension():
    # allowzero=1: 0 is a real zero-size dimension, not a copy of the input's
    node = helper.make_node("Reshape", ["C", "shape"], ["Y"], allowzero=1)
    model = make_model([node], {}, ["Y"], {"C": np.zeros((0, 4), np.float32), "shape": np.array([4, 0], np.int64)},
                       opset=14)
    graph = import_onnx(model)
    assert graph.tensor("Y").shape == (4, 0) and not graph.ops()


@pytest.mark.parametrize("shape,message", [
    ([7, -1], r"cannot reshape input of shape \(2, 3, 4, 5\) \(120 elements\) into shape=\(7, -1\)"),
    ([-1, -1], r"at most one -1"), ([0, 0, 0, 0, 0], r"the 0 at index 4 copies a dimension"),
    ([5, 5], r"resolved to \(5, 5\)"),
])
def test_reshape_bad_shape(shape, message):
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape")
    model = make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"shape": np.array(shape, np.int64)}, opset=13)
    with pytest.raises(ModelImportError, match=r"node 'reshape' \(Reshape, opset 13\): .*" + message):
        import_onnx(model)


def test_reshape_with_runtime_shape_is_unsupported():
    node = helper.make_node("Reshape", ["X", "S"], ["Y"], name="reshape")
    model = make_model([node], {"X": [2, 3]}, ["Y"], opset=13)
    model.graph.input.append(helper.make_tensor_value_info("S", INT64, [2]))
    with pytest.raises(ModelImportError, match=r"graph input 'S' has element type INT64"):
        import_onnx(model)


# negative axes exist from opset 11 on
@pytest.mark.parametrize("axis,expected,opset", [
    (axis, expected, opset) for axis, expected in [(0, 0), (1, 1), (2, 2), (-1, 2), (-3, 0)] for opset in (7, 11, 13)
    if axis >= 0 or opset >= 11])
def test_concat(axis, expected, opset):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    node = helper.make_node("Concat", ["A", "B", "C"], ["Y"], name="cat", axis=axis)
    graph = check_model(make_model([node], dict(zip("ABC", shapes)), ["Y"], opset=opset))
    assert graph.op("cat").attrs.axis == expected


def test_concat_with_a_constant_input():
    node = helper.make_node("Concat", ["A", "K"], ["Y"], name="cat", axis=1)
    k = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = check_model(make_model([node], {"A": [2, 2]}, ["Y"], {"K": k}))
    assert graph.op("cat").kind is OpKind.CONCAT and graph.tensor("K").data is not None


def test_concat_of_mismatched_shapes_names_node():
    node = helper.make_node("Concat", ["A", "B"], ["Y"], name="cat", axis=1)
    with pytest.raises(ModelImportError, match=r"node 'cat' \(Concat.*all other dimensions must match"):
        import_onnx(make_model([node], {"A": [2, 3], "B": [3, 3]}, ["Y"]))


def test_a_folded_only_op_on_a_run_time_tensor_is_reported():
    node = helper.make_node("Equal", ["X", "c"], ["Y"], name="equal")
    model = make_model([node], {"X": [4, 3]}, {"Y": onnx.TensorProto.BOOL}, {"c": np.zeros(3, np.float32)})
    with pytest.raises(UnsupportedOpError, match=r"'equal': Equal .*only supported on constants.*'X'"):
        import_onnx(model)


# --- Transpose, Squeeze/Unsqueeze, Split, Slice and Pad on run-time tensors -------------------------
def i64(v) -> np.ndarray:
    return np.array(v, np.int64)


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [1, 0, 3, 2]])
def test_transpose(perm):
    attrs = {"perm": perm} if perm is not None else {}
    graph = check_model(make_model([helper.make_node("Transpose", ["X"], ["Y"], **attrs)], {"X": [2, 3, 4, 5]},
                                   ["Y"]))
    assert graph.ops()[0].attrs.perm == tuple(perm or (3, 2, 1, 0))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op_type,axes,expected", [
    ("Squeeze", [1, -1], (2, 4)), ("Squeeze", None, (2, 4)), ("Unsqueeze", [0, -1], (1, 2, 1, 4, 1, 1)),
    ("Unsqueeze", [2], (2, 1, 1, 4, 1)),
])
def test_squeeze_unsqueeze_are_reshapes(op_type, axes, expected, opset):
    inputs, inits, attrs = ["X"], {}, {}
    if axes is not None:
        if opset >= 13:
            inputs.append("axes")
            inits["axes"] = i64(axes)
        else:
            attrs["axes"] = axes
    graph = check_model(make_model([helper.make_node(op_type, inputs, ["Y"], **attrs)], {"X": [2, 1, 4, 1]}, ["Y"],
                                   inits, opset=opset))
    assert [op.kind for op in graph.ops()] == [OpKind.RESHAPE] and graph.tensor("Y").shape == expected


def test_squeeze_of_a_dimension_that_is_not_1():
    node = helper.make_node("Squeeze", ["X", "axes"], ["Y"], name="sq")
    with pytest.raises(ModelImportError, match=r"node 'sq' .*axes=\[0\] selects dimensions of shape"):
        import_onnx(make_model([node], {"X": [2, 1]}, ["Y"], {"axes": i64([0])}, opset=13))


@pytest.mark.parametrize("opset,attrs,split,sizes", [
    (11, {"axis": 1}, None, (2, 2, 2)),
    (11, {"axis": 1, "split": [1, 2, 3]}, None, (1, 2, 3)),
    (13, {"axis": -2}, [3, 1, 2], (3, 1, 2)),
    (18, {"axis": 1, "num_outputs": 3}, None, (2, 2, 2)),
])
def test_split(opset, attrs, split, sizes):
    inputs, inits = ["X"], {}
    if split is not None:
        inputs.append("split")
        inits["split"] = i64(split)
    node = helper.make_node("Split", inputs, ["A", "B", "C"], name="split", **attrs)
    graph = check_model(make_model([node], {"X": [2, 6, 5]}, ["A", "B", "C"], inits, opset=opset))
    assert graph.ops()[0].attrs == SplitAttrs(1, sizes)


def test_split_18_uneven_num_outputs():
    node = helper.make_node("Split", ["X"], ["A", "B", "C"], axis=2, num_outputs=3)
    graph = check_model(make_model([node], {"X": [2, 3, 7]}, ["A", "B", "C"], opset=18))
    assert graph.ops()[0].attrs.sizes == (3, 3, 1)


def test_split_with_an_empty_part_is_unsupported():
    node = helper.make_node("Split", ["X", "split"], ["A", "B"], name="split", axis=1)
    with pytest.raises(UnsupportedOpError, match=r"'split': .*empty output"):
        import_onnx(make_model([node], {"X": [2, 6]}, ["A", "B"], {"split": i64([6, 0])}, opset=13))


@pytest.mark.parametrize("starts,ends,axes,steps,kind", [
    ([1], [3], [1], None, OpKind.SLICE),                     # one axis, unit step: the block-copy Slice
    ([1, 1], [100, -1], [0, 2], None, OpKind.STRIDED_SLICE),   # two axes
    ([-1], [-1000], [3], [-2], OpKind.STRIDED_SLICE),        # backwards
    ([0], [1000], [1], [2], OpKind.STRIDED_SLICE),
    ([0], [1000], [1], None, OpKind.IDENTITY),               # takes everything
])
def test_slice(starts, ends, axes, steps, kind):
    inputs, inits = ["X", "starts", "ends", "axes"], {"starts": i64(starts), "ends": i64(ends), "axes": i64(axes)}
    if steps is not None:
        inputs.append("steps")
        inits["steps"] = i64(steps)
    graph = check_model(make_model([helper.make_node("Slice", inputs, ["Y"])], {"X": [3, 4, 5, 6]}, ["Y"], inits,
                                   opset=13))
    assert [op.kind for op in graph.ops()] == [kind]


def test_slice_opset9_attributes():
    node = helper.make_node("Slice", ["X"], ["Y"], starts=[1, 0], ends=[3, -1], axes=[0, 1])
    graph = check_model(make_model([node], {"X": [4, 5]}, ["Y"], opset=9))
    assert graph.tensor("Y").shape == (2, 4)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [2, 11, 18])
def test_pad(mode, opset):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    inputs, inits, attrs = ["X"], {}, {"mode": mode}
    if opset < 11:
        attrs |= {"pads": pads, "value": 0.5}
    else:
        inputs += ["pads", "value"]
        inits |= {"pads": i64(pads), "value": np.array(0.5, np.float32)}
    graph = check_model(make_model([helper.make_node("Pad", inputs, ["Y"], name="pad", **attrs)],
                                   {"X": [1, 2, 4, 5]}, ["Y"], inits, opset=max(opset, 7)))
    assert graph.ops()[0].attrs == PadAttrs(tuple(pads), mode, 0.5)


def test_pad_18_axes_and_19_wrap():
    node = helper.make_node("Pad", ["X", "pads", "", "axes"], ["Y"], mode="wrap")
    graph = check_model(make_model([node], {"X": [1, 2, 4, 5]}, ["Y"], {"pads": i64([2, 1, 0, 3]),
                                                                        "axes": i64([-1, 1])}, opset=19))
    assert graph.ops()[0].attrs.pads == (0, 1, 0, 2, 0, 3, 0, 0)


def test_pad_of_integer_data_is_unsupported():
    node = helper.make_node("Pad", ["X", "pads"], ["Y"], name="pad")
    model = make_model([node], {"X": [2, 3]}, {"Y": INT64}, {"pads": i64([0, 1, 0, 1])}, opset=13, input_type=INT64)
    with pytest.raises((UnsupportedOpError, ModelImportError), match="INT64|int64"):
        import_onnx(model)


@pytest.mark.parametrize("shape,repeats,threads", [((2, 3, 5, 7), (1, 1, 2, 3), 2), ((16, 8, 9, 11), (2, 1, 1, 1), 1),
                                                  ((3, 4), (3, 2), 2), ((2, 3, 4), (1, 1, 1), 1)])
def test_tile_compiles_as_concats(shape, repeats, threads, monkeypatch):
    """Tile of a computed tensor: a Concat of copies per tiled axis, bit-exact against onnxruntime, under
    the arena check (one tensor several times in one Concat)."""
    import onnxruntime

    import convc
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    nodes = [helper.make_node("Relu", ["X"], ["R"]), helper.make_node("Tile", ["R", "reps"], ["Y"])]
    model = make_model(nodes, {"X": shape}, ["Y"], {"reps": np.array(repeats, np.int64)}, opset=13)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"X": x})[0]
    got = convc.compile(model, threads=threads, cache=False).run({"X": x})["Y"]
    np.testing.assert_array_equal(got, want)
    check_model(model)


def test_tile_of_a_constant_folds_and_bad_repeats_are_refused():
    nodes = [helper.make_node("Tile", ["c", "reps"], ["t"]), helper.make_node("Add", ["X", "t"], ["Y"])]
    model = make_model(nodes, {"X": (4, 6)}, ["Y"], {"c": np.arange(6, dtype=np.float32).reshape(2, 3),
                                                     "reps": np.array([2, 2], np.int64)})
    g = check_model(model)
    assert op_kinds(g) == [OpKind.ADD]
    bad = make_model([helper.make_node("Tile", ["X", "reps"], ["Y"])], {"X": (4, 6)}, ["Y"],
                     {"reps": np.array([2], np.int64)})
    with pytest.raises(ModelImportError, match="one non-negative count per axis"):
        import_onnx(bad)
