"""Expand, Gather (constant indices) and Where (constant condition) on run-time tensors: imported, compiled at
batch 16 with odd sizes, 1 and 2 threads, and compared with onnxruntime (copies: bit for bit)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import make_model, run_onnx

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


def compiled_matches(model, feeds, threads):
    want = run_onnx(model, feeds)
    got = convc.compile(model, threads=threads).run(feeds)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def x_of(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,target", [
    ((16, 5, 1, 1), (16, 5, 29, 23)),      # a pooled statistic broadcast back over H and W
    ((5, 1, 23), (16, 5, 29, 23)),          # new leading axis
    ((16, 1, 29, 23), (1, 3, 1, 1)),        # target 1s keep the input's dimensions
    ((16, 7, 29, 23), (16, 7, 29, 23)),     # nothing grows
])
def test_expand(shape, target, threads):
    m = make_model([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": shape}, ["y"],
                   {"s": np.array(target, np.int64)}, opset=13)
    compiled_matches(m, {"x": x_of(shape)}, threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("axis,indices", [
    (1, np.array([4, 5, 6, 0, 0, -1], np.int64)),   # runs, a repeat and a negative index
    (1, np.array(2, np.int64)),                      # a scalar index drops the axis
    (3, np.array([[22, 0], [1, 2]], np.int64)),      # 2-D indices on the last axis
    (-2, np.arange(29, dtype=np.int64)),             # every index in order
    (0, np.array([3, 15, 0], np.int32)),             # along the batch
])
def test_gather(axis, indices, threads):
    shape = (16, 7, 29, 23)
    m = make_model([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], {"x": shape}, ["y"],
                   {"i": indices}, opset=13)
    compiled_matches(m, {"x": x_of(shape)}, threads)


def test_expand_of_a_mean_is_one_broadcast_copy_and_exports():
    from convc.frontend.onnx_export import export_onnx
    m = make_model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
                    helper.make_node("Expand", ["m", "s"], ["e"]), helper.make_node("Sub", ["x", "e"], ["y"])],
                   {"x": (16, 5, 29, 23)}, ["y"], {"s": np.array([16, 5, 29, 23], np.int64)}, opset=13)
    graph = import_onnx(m)
    assert [op.kind for op in graph.ops()] == [OpKind.GLOBAL_AVERAGE_POOL, OpKind.EXPAND, OpKind.SUB]
    feeds = {"x": x_of((16, 5, 29, 23))}
    want = run_onnx(m, feeds)["y"]
    np.testing.assert_allclose(convc.compile(m, threads=2).run(feeds)["y"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_onnx(export_onnx(graph), feeds)["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["Expand", "Where"])
def test_gradients(kind):
    """Expand's gradient sums over the broadcast axes; Where's masks dY into X's and Y's parts."""
    from train.grad_helpers import check_gradient
    from convc.ops import NoAttrs
    from convc.ops.shape import ExpandAttrs
    rng = np.random.default_rng(3)
    if kind == "Expand":
        check_gradient(OpKind.EXPAND, ExpandAttrs((2, 3, 5, 4)), [x_of((3, 1, 4))], rng=rng)
    else:
        mask = (rng.random((1, 3, 5, 1)) < 0.5).astype(np.float32)
        check_gradient(OpKind.WHERE, NoAttrs(), [mask, x_of((2, 3, 5, 4)), x_of((3, 1, 4), seed=1)], wrt=(1, 2),
                       rng=rng)


def specials(shape, seed=0):
    x = x_of(shape, seed)
    flat = x.reshape(-1)
    flat[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38][:flat.size]
    return x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cond_shape,x_shape,y_shape,y_constant", [
    ((16, 5, 29, 23), (16, 5, 29, 23), (16, 5, 29, 23), False),
    ((1, 5, 1, 23), (16, 5, 29, 23), (16, 5, 29, 23), False),    # a condition broadcast over batch and H
    ((29, 23), (16, 1, 29, 23), (), True),                        # masked_fill: y a scalar constant
    ((16, 5, 29, 23), (5, 1, 1), (16, 5, 29, 23), False),          # x broadcast per channel
])
def test_where_with_a_constant_condition(cond_shape, x_shape, y_shape, y_constant, threads):
    rng = np.random.default_rng(1)
    inits = {"c": rng.random(cond_shape) < 0.4}
    inputs = {"x": x_shape}
    if y_constant:
        inits["y0"] = np.asarray(rng.standard_normal(y_shape), np.float32)
    else:
        inputs["y0"] = y_shape
    m = make_model([helper.make_node("Where", ["c", "x", "y0"], ["y"])], inputs, ["y"], inits, opset=13)
    feeds = {k: specials(s, seed=i) for i, (k, s) in enumerate(inputs.items())}
    compiled_matches(m, feeds, threads)
    assert [op.kind for op in import_onnx(m).ops()] == [OpKind.WHERE]


def test_where_after_a_conv_and_its_export():
    """A mask over the pixels of a conv's output (a channels-last producer), and the graph written back to ONNX."""
    from convc.frontend.onnx_export import export_onnx
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "c": rng.random((1, 1, 29, 23)) < 0.5,
             "z": np.zeros((), np.float32)}
    m = make_model([helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                    helper.make_node("Where", ["c", "h", "z"], ["y"])], {"x": (16, 3, 29, 23)}, ["y"], inits, opset=13)
    feeds = {"x": x_of((16, 3, 29, 23))}
    want = run_onnx(m, feeds)["y"]
    np.testing.assert_allclose(convc.compile(m, threads=2).run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    exported = export_onnx(import_onnx(m))
    np.testing.assert_allclose(run_onnx(exported, feeds)["y"], want, rtol=1e-5, atol=1e-5)


def test_where_folds_when_x_and_y_are_constants_too():
    m = make_model([helper.make_node("Where", ["c", "a", "b"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])],
                   {"x": (2, 3)}, ["y"], {"c": np.array([True, False, True]), "a": np.ones(3, np.float32),
                                          "b": np.zeros(3, np.float32)}, opset=13)
    assert [op.kind for op in import_onnx(m).ops()] == [OpKind.ADD]


@pytest.mark.parametrize("threads", [1, 2])
def test_gather_of_channels_between_convs(threads):
    """Channels picked (reordered, repeated) from a conv's output for the next conv: the Slices and the Concat of a
    channels-last producer."""
    rng = np.random.default_rng(4)
    inits = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "i": np.array([5, 6, 7, 0, 3, 3], np.int64),
             "v": rng.standard_normal((4, 6, 1, 1)).astype(np.float32)}
    m = make_model([helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                    helper.make_node("Gather", ["h", "i"], ["g"], axis=1), helper.make_node("Conv", ["g", "v"], ["y"])],
                   {"x": (16, 3, 29, 23)}, ["y"], inits, opset=13)
    feeds = {"x": x_of((16, 3, 29, 23))}
    np.testing.assert_allclose(convc.compile(m, threads=threads).run(feeds)["y"], run_onnx(m, feeds)["y"], rtol=1e-5,
                               atol=1e-5)
