"""Kernel selection's Winograd rule (passes/kernel_selection.py winograd_algorithm) and the option
that turns it off (CompileOptions.winograd, convc.compile(winograd=False), --no-winograd)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pass_helpers import add_input, conv_attrs, weight

import convc
from convc.errors import InputError
from convc.ir import Graph
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.options import applied, resolve_options
from convc.passes.kernel_selection import select_kernels, select_training_kernels
from convc.passes.pipeline import pipeline


def algorithms(g: Graph) -> dict[str, A]:
    return {op.name: op.attrs.algorithm for op in g.ops() if op.kind is OpKind.CONV}


def one_conv(rng, n: int, c: int, m: int, hw: int, k: int = 3, stride: int = 1, dilation: int = 1) -> Graph:
    g = Graph("one_conv")
    g.inputs = [add_input(g, "x", (n, c, hw, hw))]
    w = g.add_constant("w", weight(rng, m, c, k, k)).name
    attrs = conv_attrs(k, stride=stride, pad=dilation * (k // 2), dilation=dilation)
    g.outputs = list(g.add_op(OpKind.CONV, attrs, ["x", w], name="conv").outputs)
    return g


@pytest.mark.parametrize("n,c,m,hw,k,stride,dilation,want", [
    (1, 64, 64, 56, 3, 1, 1, A.WINOGRAD_4X4),    # ResNet-18 layer1: 196 tiles of 4x4
    (1, 256, 256, 14, 3, 1, 1, A.WINOGRAD_4X4),  # layer3: 16 tiles
    (1, 16, 16, 13, 3, 1, 1, A.WINOGRAD_4X4),    # 16 channels, 4x4 tiles over 13 px (partial ones)
    (1, 64, 64, 7, 3, 1, 1, A.WINOGRAD_4X4),     # 4 tiles, but 590 KB of transformed weights
    (1, 512, 512, 7, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),  # layer4 at batch 1: 4 tiles for 38 MB of them
    (3, 64, 64, 4, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),   # 3 tiles
    (2, 512, 512, 7, 3, 1, 1, A.WINOGRAD_4X4),   # ... at batch 2: 8 tiles
    (1, 15, 64, 32, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),  # fewer than 16 input channels
    (1, 3, 64, 32, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),   # an RGB input
    (1, 64, 4, 32, 3, 1, 1, A.WINOGRAD_4X4),     # 4 output channels
    (1, 64, 3, 32, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),   # fewer than 4
    (1, 64, 64, 32, 3, 2, 1, A.IMPLICIT_GEMM_NHWC),  # stride 2
    (1, 64, 64, 32, 3, 1, 2, A.IMPLICIT_GEMM_NHWC),  # dilation 2
    (1, 64, 64, 32, 5, 1, 1, A.IMPLICIT_GEMM_NHWC),  # 5x5
    (1, 64, 64, 32, 1, 1, 1, A.IMPLICIT_GEMM_NHWC),  # 1x1
])
def test_winograd_only_where_the_rule_says(rng, n, c, m, hw, k, stride, dilation, want):
    assert algorithms(pipeline(one_conv(rng, n, c, m, hw, k, stride, dilation)).graph) == {"conv": want}


def test_option_off_keeps_the_direct_kernel(rng):
    """winograd=False (argument, or the compile's options) gives the direct algorithm on the plan."""
    g = one_conv(rng, 1, 64, 64, 28)
    assert algorithms(pipeline(g).graph) == {"conv": A.WINOGRAD_4X4}
    with applied(resolve_options(winograd=False)):
        assert algorithms(pipeline(g).graph) == {"conv": A.IMPLICIT_GEMM_NHWC}
    assert algorithms(pipeline(g).graph) == {"conv": A.WINOGRAD_4X4}  # the context ends with the compile
    nhwc = pipeline(g).graph
    assert algorithms(select_kernels(nhwc, winograd=False)) == {"conv": A.IMPLICIT_GEMM_NHWC}
    assert algorithms(select_training_kernels(nhwc)) == {"conv": A.IMPLICIT_GEMM_NHWC}


@pytest.mark.slow
def test_compile_option(rng):
    g = one_conv(rng, 2, 32, 48, 20)
    x = {"x": rng.standard_normal((2, 32, 20, 20)).astype(np.float32)}
    on = convc.compile(g, threads=2, cache=False)
    off = convc.compile(g, threads=2, winograd=False)
    assert set(algorithms(on.graph).values()) == {A.WINOGRAD_4X4}
    assert set(algorithms(off.graph).values()) == {A.IMPLICIT_GEMM_NHWC}
    a, b = on.run(x)[g.outputs[0]], off.run(x)[g.outputs[0]]
    assert np.abs(a - b).max() / np.abs(b).max() < 1e-4
    assert not np.array_equal(a, b)  # really two different kernels


@pytest.mark.parametrize("bad", ["no", 0, 1, 1.0])
def test_option_must_be_a_bool(rng, bad):
    with pytest.raises(InputError, match="winograd must be True or False"):
        resolve_options(winograd=bad)
    with pytest.raises(InputError, match="winograd"):
        convc.compile(one_conv(rng, 1, 16, 16, 16), winograd=bad)


def dynamic_batch_model(rng) -> onnx.ModelProto:
    w = numpy_helper.from_array(weight(rng, 32, 32, 3, 3), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.slow
def test_option_reaches_batch_variants(rng):
    """A batch size compiled on first use (after convc.compile returned) keeps winograd=False."""
    model = convc.compile(dynamic_batch_model(rng), winograd=False, threads=1)
    feeds = {"x": rng.standard_normal((4, 32, 16, 16)).astype(np.float32)}
    y = model.run(feeds)["y"]
    variant = model._variant_for(feeds)
    assert variant is not model and variant.batch == 4
    assert set(algorithms(variant.graph).values()) == {A.IMPLICIT_GEMM_NHWC}
    default = convc.compile(dynamic_batch_model(rng), threads=1, cache=False)
    default.run(feeds)
    assert set(algorithms(default._variant_for(feeds).graph).values()) == {A.WINOGRAD_4X4}
    assert y.shape == (4, 32, 16, 16)


@pytest.mark.slow
def test_option_is_not_served_from_the_compile_cache(rng, tmp_path, monkeypatch):
    """The cache finds a model by its source's hash and options: a Winograd model cached first must
    not come back for winograd=False, the default compile afterwards still gets Winograd, and a
    second winograd=False compile is its own cache hit (no LLVM)."""
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    model = dynamic_batch_model(rng).SerializeToString()
    first = convc.compile(model, batch=2, threads=1)
    off = convc.compile(model, batch=2, threads=1, winograd=False)
    again = convc.compile(model, batch=2, threads=1)
    assert set(algorithms(first.graph).values()) == {A.WINOGRAD_4X4}
    assert set(algorithms(off.graph).values()) == {A.IMPLICIT_GEMM_NHWC}
    assert set(algorithms(again.graph).values()) == {A.WINOGRAD_4X4}
    assert any(tmp_path.iterdir())  # the default compiles did use the cache
    stages: list[str] = []
    off_again = convc.compile(model, batch=2, threads=1, winograd=False, progress=stages.append)
    assert not any(s.startswith("LLVM") for s in stages), stages
    assert set(algorithms(off_again.graph).values()) == {A.IMPLICIT_GEMM_NHWC}
