"""MaxPool, AveragePool and the global pools."""
from __future__ import annotations

import pytest
from onnx import helper
from onnx_import_helpers import check_model, count, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind

POOLS = [("MaxPool", OpKind.MAX_POOL), ("AveragePool", OpKind.AVERAGE_POOL)]


def pool_model(op_type, x_shape, opset=17, outputs=("Y",), **attrs):
    node = helper.make_node(op_type, ["X"], list(outputs), name="pool", **attrs)
    out_types = {"Y": 1, "I": 7} if len(outputs) == 2 else ["Y"]
    return make_model([node], {"X": x_shape}, out_types, opset=opset)


@pytest.mark.parametrize("op_type,kind", POOLS)
@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("kernel,strides", [((3, 3), (1, 1)), ((3, 2), (2, 2)), ((2, 2), (2, 3))])
def test_pool_auto_pad(op_type, kind, auto_pad, kernel, strides):
    graph = check_model(pool_model(op_type, [1, 2, 9, 8], kernel_shape=kernel, strides=strides, auto_pad=auto_pad))
    assert graph.op("pool").kind is kind
    if auto_pad.startswith("SAME"):
        assert graph.tensor("Y").shape[2:] == (-(-9 // strides[0]), -(-8 // strides[1]))


@pytest.mark.parametrize("op_type,attrs", [("MaxPool", {}), ("AveragePool", {"count_include_pad": 0}),
                                           ("AveragePool", {"count_include_pad": 1})])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 1, 2, 0), (1, 0, 0, 0)])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool_pads_ceil_mode(op_type, attrs, pads, ceil_mode):
    graph = check_model(pool_model(op_type, [2, 3, 10, 7], kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                                   ceil_mode=ceil_mode, **attrs))
    assert graph.op("pool").attrs.ceil_mode == bool(ceil_mode)
    assert graph.op("pool").attrs.count_include_pad == bool(attrs.get("count_include_pad", 0))


@pytest.mark.parametrize("op_type,opset", [("MaxPool", 10), ("MaxPool", 12), ("AveragePool", 19), ("AveragePool", 22)])
@pytest.mark.parametrize("dilations", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool_dilations(op_type, opset, dilations, ceil_mode):
    graph = check_model(pool_model(op_type, [1, 2, 11, 10], opset=opset, kernel_shape=[2, 3], strides=[2, 1],
                                   pads=[1, 0, 1, 1], dilations=dilations, ceil_mode=ceil_mode))
    assert graph.op("pool").attrs.dilations == dilations


@pytest.mark.parametrize("op_type,kind", POOLS)
@pytest.mark.parametrize("auto_pad,pads", [("NOTSET", (1, 1)), ("SAME_UPPER", None), ("VALID", None)])
def test_pool_1d(op_type, kind, auto_pad, pads):
    attrs = {"pads": pads} if pads else {}
    graph = check_model(pool_model(op_type, [2, 3, 11], kernel_shape=[3], strides=[2], auto_pad=auto_pad, **attrs))
    assert graph.op("pool").attrs.spatial_rank == 1


@pytest.mark.parametrize("op_type,opset", [("MaxPool", 7), ("MaxPool", 8), ("AveragePool", 7), ("AveragePool", 10),
                                           ("AveragePool", 11)])
def test_pool_old_opsets(op_type, opset):
    check_model(pool_model(op_type, [1, 2, 6, 6], opset=opset, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]))


@pytest.mark.parametrize("op_type,kind", [("GlobalAveragePool", OpKind.GLOBAL_AVERAGE_POOL),
                                          ("GlobalMaxPool", OpKind.GLOBAL_MAX_POOL)])
@pytest.mark.parametrize("x_shape", [[2, 3, 5], [2, 3, 4, 5]])
def test_global_pools(op_type, kind, x_shape):
    graph = check_model(make_model([helper.make_node(op_type, ["X"], ["Y"])], {"X": x_shape}, ["Y"]))
    assert count(graph, kind) == 1


def test_max_pool_indices_output_is_unsupported():
    with pytest.raises(UnsupportedOpError, match=r"'pool': MaxPool .*'Indices' is used"):
        import_onnx(pool_model("MaxPool", [1, 1, 4, 4], outputs=("Y", "I"), kernel_shape=[2, 2]))


def test_max_pool_unused_indices_output_imports():
    node = helper.make_node("MaxPool", ["X"], ["Y", "I"], name="pool", kernel_shape=[2, 2])
    check_model(make_model([node], {"X": [1, 1, 4, 4]}, ["Y"]))


def test_max_pool_storage_order_is_unsupported():
    with pytest.raises(UnsupportedOpError, match=r"storage_order=1"):
        import_onnx(pool_model("MaxPool", [1, 1, 4, 4], kernel_shape=[2, 2], storage_order=1))


@pytest.mark.parametrize("attrs,message", [
    ({"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, r"pads=\(2, 0, 0, 0\) must be smaller than"),
    ({"kernel_shape": [2]}, r"kernel_shape=\(2,\) is 1-D but the input has spatial shape \(4, 4\)"),
    ({"kernel_shape": [2, 0]}, r"kernel_shape=\(2, 0\) must be positive"),
    ({"kernel_shape": [2, 2], "strides": [1, 1, 1]}, r"strides=\(1, 1, 1\) has 3 values, expected 2"),
])
def test_pool_bad_attributes(attrs, message):
    with pytest.raises(ModelImportError, match=r"node 'pool' \(MaxPool, opset 17\): " + message):
        import_onnx(pool_model("MaxPool", [1, 1, 4, 4], **attrs))


def test_average_pool_dilations_before_opset_19_is_rejected():
    with pytest.raises(ModelImportError, match=r"'pool'.*attribute 'dilations' is not part of AveragePool-11"):
        import_onnx(pool_model("AveragePool", [1, 1, 4, 4], opset=17, kernel_shape=[2, 2], dilations=[1, 1]))


@pytest.mark.parametrize("op_type,kind", [("MaxPool", OpKind.MAX_POOL), ("AveragePool", OpKind.AVERAGE_POOL)])
@pytest.mark.parametrize("attrs", [{"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]},
                                   {"kernel_shape": [3, 3, 3], "pads": [1, 0, 1, 1, 1, 0], "strides": [2, 1, 2]},
                                   {"kernel_shape": [3, 2, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2, 2]}])
def test_pool_3d(op_type, kind, attrs):
    graph = check_model(pool_model(op_type, [1, 2, 5, 6, 7], **attrs))
    assert count(graph, kind) == 1


@pytest.mark.parametrize("attrs", [{"kernel_shape": [3, 3]}, {"kernel_shape": [2, 2], "strides": [2, 2], "p": 1},
                                   {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "p": 3},
                                   {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}])
@pytest.mark.parametrize("opset", [11, 18])
def test_lp_pool(attrs, opset):
    graph = check_model(pool_model("LpPool", [1, 2, 6, 7], opset=opset, **attrs))
    assert count(graph, OpKind.LP_POOL) == 1 and graph.ops()[0].attrs.p == attrs.get("p", 2)


def test_pool_4d_is_unsupported():
    with pytest.raises(UnsupportedOpError, match="4-D pooling"):
        import_onnx(pool_model("MaxPool", [1, 1, 3, 3, 3, 3], kernel_shape=[2, 2, 2, 2]))
