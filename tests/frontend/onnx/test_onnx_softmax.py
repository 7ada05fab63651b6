"""Softmax: the 2-D coercion before opset 13, a single axis from 13 on."""
from __future__ import annotations

import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model

from convc.ops import OpKind


CASES_BEFORE_13 = [
    ((2, 3, 4), 2, [OpKind.SOFTMAX]), ((2, 3, 4), -1, [OpKind.SOFTMAX]),
    ((2, 3, 4), 1, [OpKind.RESHAPE, OpKind.SOFTMAX, OpKind.RESHAPE]),
    ((2, 3, 4), 0, [OpKind.RESHAPE, OpKind.SOFTMAX, OpKind.RESHAPE]),
    ((2, 10, 1, 1), 1, [OpKind.SOFTMAX]),  # trailing ones: the coerced row is just the axis
    ((3, 5), None, [OpKind.SOFTMAX]),
]


# negative axes exist from opset 11 on
@pytest.mark.parametrize("x_shape,axis,kinds,opset", [
    (*case, opset) for case in CASES_BEFORE_13 for opset in (7, 11, 12) if case[1] is None or case[1] >= 0 or opset >= 11])
def test_softmax_before_13(opset, x_shape, axis, kinds):
    attrs = {} if axis is None else {"axis": axis}
    graph = check_model(make_model([helper.make_node("Softmax", ["X"], ["Y"], **attrs)], {"X": x_shape}, ["Y"],
                                   opset=opset))
    assert [op.kind for op in graph.ops()] == kinds
    assert graph.tensor("Y").shape == tuple(x_shape)


@pytest.mark.parametrize("opset", [13, 22])
@pytest.mark.parametrize("axis,expected", [(None, 2), (0, 0), (1, 1), (-1, 2), (-3, 0)])
def test_softmax_13(opset, axis, expected):
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node("Softmax", ["X"], ["Y"], name="softmax", **attrs)
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], opset=opset))
    assert [op.kind for op in graph.ops()] == [OpKind.SOFTMAX]
    assert graph.op("softmax").attrs.axis == expected


@pytest.mark.parametrize("opset,axis,kinds", [
    (11, 1, [OpKind.RESHAPE, OpKind.LOG_SOFTMAX, OpKind.RESHAPE]), (11, -1, [OpKind.LOG_SOFTMAX]),
    (13, 1, [OpKind.LOG_SOFTMAX]), (13, 0, [OpKind.LOG_SOFTMAX]),
])
def test_log_softmax(opset, axis, kinds):
    node = helper.make_node("LogSoftmax", ["X"], ["Y"], axis=axis)
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], opset=opset))
    assert [op.kind for op in graph.ops()] == kinds
