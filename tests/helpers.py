"""One checker for single-op tests: compile the op, compare with its numpy reference and with ONNX.

``check_op`` builds a one-op convc Graph, verifies and compiles it, checks the compiled output's
shape and dtype against ``op_def(kind).reference`` before comparing values, then builds the same
op as a single-node ONNX model and compares with ``onnx.reference.ReferenceEvaluator`` too (or with
onnxruntime for the few cases where the reference evaluator is known to be wrong, see
``reference_evaluator_bug``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind, op_def
from convc.ops.attrs import onnx_spelling as declared_spelling
from convc.ops.pool import PoolAttrs, pool_output_size

OPSET = 19  # AveragePool gained dilations in opset 19
RTOL = 1e-4


@dataclass(frozen=True)
class OnnxNode:
    """The ONNX spelling of one op: type, attributes, and constant inputs appended after the data inputs
    (e.g. Reshape's ``shape``)."""
    op_type: str
    attributes: dict[str, Any] = field(default_factory=dict)
    extra_inputs: tuple[np.ndarray, ...] = ()


def onnx_spelling(kind: OpKind, attrs: Any) -> OnnxNode:
    """Map convc attributes to the ONNX attributes of the same op at ``OPSET``: the fields declared with
    ``onnx_attr`` (convc/ops/attrs.py) spell themselves; the rest are written out here."""
    k = OpKind
    if kind is k.PAD:
        return OnnxNode("Pad", {"mode": attrs.mode}, (np.array(attrs.pads, np.int64), np.array(attrs.value, np.float32)))
    if kind is k.STRIDED_SLICE:  # ends one step past the last element; -(2**62) reads "before index 0"
        ends = [s + n * st if s + n * st >= 0 else -(2**62) for s, st, n in zip(attrs.starts, attrs.steps, attrs.shape)]
        return OnnxNode("Slice", extra_inputs=(np.array(attrs.starts, np.int64), np.array(ends, np.int64),
                                               np.arange(len(ends), dtype=np.int64), np.array(attrs.steps, np.int64)))
    if kind is k.RESHAPE:
        return OnnxNode("Reshape", extra_inputs=(np.array(attrs.shape, dtype=np.int64),))
    attributes, inputs = declared_spelling(attrs, OPSET)
    # a declared field the op type does not have is left out: MaxPool's count_include_pad (PoolAttrs
    # serves AveragePool too), which no max depends on
    if kind is k.MAX_POOL:
        del attributes["count_include_pad"]
    if kind is k.CONV_TRANSPOSE:
        attributes["output_padding"] = list(attrs.extra)
    # constant inputs follow the one data input of the unary ops that have them (Clip, Dropout)
    assert sorted(inputs) == list(range(1, len(inputs) + 1)), f"{kind.value}: constant inputs at {sorted(inputs)}"
    return OnnxNode(kind.value, attributes, tuple(inputs[i] for i in sorted(inputs)))


def without_flop_rule(monkeypatch: Any, kind: OpKind) -> None:
    """For one test, ``kind`` has no FLOP rule (its OpDef with ``flops=None``), as an op nobody modelled."""
    from dataclasses import replace

    from convc.ops import base
    monkeypatch.setitem(base._REGISTRY, kind, replace(base._REGISTRY[kind], flops=None))


def reference_evaluator_bug(kind: OpKind, attrs: Any, inputs: Sequence[np.ndarray]) -> str | None:
    """Why onnx.reference (1.23) gets this case wrong, or None. Those cases run on onnxruntime instead."""
    if kind is OpKind.MAX_POOL and all(s == 1 for s in attrs.strides) and all(d == 1 for d in attrs.dilations) \
            and (any(attrs.pads) or attrs.ceil_mode):
        return ("unit-stride MaxPool goes through _op_common_pool, which reads 2-D pads as (top, bottom, left, "
                "right), ignores 1-D pads and overcounts ceil_mode outputs")
    if kind is OpKind.AVERAGE_POOL and attrs.ceil_mode and max(ceil_overhang(attrs, inputs[0].shape)) >= 2:
        return ("ceil_mode AveragePool splits the overhang padding it adds in two and puts half of it before "
                "the input, shifting every window once the overhang is 2 or more")
    if kind is OpKind.CONV_TRANSPOSE and attrs.group > 1:
        return "grouped ConvTranspose slices W by output channels and keeps one output channel per group"
    if kind is OpKind.LP_POOL and (any(attrs.pads) or attrs.ceil_mode):
        return ("LpPool takes kernel_size x the average of |x|^p over the window's inside taps, which scales up "
                "every window that overlaps the padding")
    if kind is OpKind.LRN:
        return "LRN sums squares for channels 0 to batch-1 only (its loop runs over the batch axis)"
    if kind is OpKind.PAD and min(attrs.pads) < 0:
        return "Pad hands negative pads (cropping) to numpy.pad, which rejects them"
    if kind is OpKind.GLOBAL_MAX_POOL and inputs[0].ndim != 4:
        return "GlobalMaxPool reduces axes (rank - 2, rank - 1): right for rank-4 inputs only"
    return None


def ceil_overhang(a: PoolAttrs, x_shape: tuple[int, ...]) -> list[int]:
    """Per spatial axis, how far the last ceil_mode window reaches past the end padding."""
    r = a.spatial_rank
    out = [pool_output_size(x_shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i], a.pads[i],
                            a.pads[r + i], a.ceil_mode) for i in range(r)]
    return [(out[i] - 1) * a.strides[i] + (a.kernel_shape[i] - 1) * a.dilations[i] + 1
            - (x_shape[2 + i] + a.pads[i] + a.pads[r + i]) for i in range(r)]


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # its shape inference warns about the ceil_mode windows it keeps
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(|expected|, 1) over the finite elements of ``expected``.

    Relative where |expected| >= 1 and absolute below, so values near zero do not blow up the
    ratio. NaN and infinite elements must match exactly (raises AssertionError otherwise)."""
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (f"NaN positions differ: actual at {np.argwhere(nan_a)[:5].tolist()}, "
                                          f"expected at {np.argwhere(nan_e)[:5].tolist()}")
    inf_e = np.isinf(e)
    assert np.array_equal(a[inf_e], e[inf_e]) and not np.isinf(a[~inf_e]).any(), "infinite values differ"
    finite = ~(nan_e | inf_e)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(a[finite] - e[finite]) / np.maximum(np.abs(e[finite]), 1.0)))


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    err = max_rel_error(actual, expected)
    assert err < rtol, f"{what}: max relative error {err:.3g} >= {rtol:g}"


def build_graph(kind: OpKind, attrs: Any, inputs: Sequence[np.ndarray], const: set[int] | frozenset[int]) -> Graph:
    """A graph with one op; input ``i`` is a constant when ``i in const``, else a graph input."""
    g = Graph(f"single_{kind.value}")
    names = []
    for i, x in enumerate(inputs):
        name = f"x{i}"
        if i in const:
            g.add_constant(name, x)
        else:
            g.add_tensor(name, x.shape, x.dtype, TensorKind.INPUT)
        names.append(name)
    g.add_op(kind, attrs, names, ["y"])
    g.outputs = ["y"]
    return g


def onnx_model(node: OnnxNode, inputs: Sequence[np.ndarray], const: set[int] | frozenset[int],
               out_shape: tuple[int, ...]) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(len(inputs))] + [f"extra{i}" for i in range(len(node.extra_inputs))]
    graph_inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, x.shape)
                    for i, x in enumerate(inputs) if i not in const]
    inits = [numpy_helper.from_array(x, f"x{i}") for i, x in enumerate(inputs) if i in const]
    inits += [numpy_helper.from_array(x, f"extra{i}") for i, x in enumerate(node.extra_inputs)]
    nd = helper.make_node(node.op_type, names, ["y"], **node.attributes)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph([nd], f"single_{node.op_type}", graph_inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # the schema check catches a misspelt attribute; no full_check: onnx shape inference keeps the ceil_mode
    # windows that start in the end padding, which the MaxPool spec (and onnx.reference) drop
    onnx.checker.check_model(model)
    return model


def check_op(kind: OpKind, attrs: Any, inputs: Sequence[np.ndarray], const: set[int] | frozenset[int] = frozenset(),
             onnx_node: OnnxNode | None = None, rtol: float = RTOL, onnx_check: bool = True) -> np.ndarray:
    """Compile one op and compare it with the numpy reference and the ONNX reference evaluator.

    ``const`` holds the positions of the inputs that become graph constants (ONNX initializers);
    the others are graph inputs fed at run time. ``onnx_node`` overrides the ONNX spelling derived
    from ``attrs``; ``onnx_check=False`` skips ONNX (a test that does so must say why).
    Returns the compiled output for extra, test-specific assertions."""
    inputs = [np.ascontiguousarray(x) for x in inputs]
    g = build_graph(kind, attrs, inputs, const)
    g.verify()
    model = convc.compile(g)
    feeds = {f"x{i}": x for i, x in enumerate(inputs) if i not in const}
    got = model.run(feeds)["y"]

    (ref,) = op_def(kind).reference(attrs, *inputs)
    declared = g.tensor("y")
    assert ref.shape == declared.shape and ref.dtype == declared.dtype, (
        f"numpy reference gives {ref.shape} {ref.dtype}, shape inference {declared.shape} {declared.dtype}")
    assert_close(got, ref, rtol, f"{kind.value} vs numpy reference")

    if onnx_check:
        proto = onnx_model(onnx_node or onnx_spelling(kind, attrs), inputs, const, ref.shape)
        if reference_evaluator_bug(kind, attrs, inputs) is None:
            expected, oracle = ReferenceEvaluator(proto).run(None, feeds)[0], "onnx.reference"
        else:
            expected, oracle = run_onnxruntime(proto, feeds), "onnxruntime"
        assert_close(got, np.asarray(expected), rtol, f"{kind.value} vs {oracle}")
    return got


def nhwc_conv_graph(x_shape, m: int, attrs, bias: bool, rng: np.random.Generator, name: str = "conv"):
    """One channels-last conv x [N, H, W, C] -> y [N, OH, OW, m] with random weights (and bias), plus a
    residual input r of y's shape when the epilogue adds one; the op is named ``name``."""
    import dataclasses

    from convc.ir import Graph, TensorKind
    from convc.ops import OpKind
    from convc.ops.epilogue import Epilogue
    g = Graph("conv_nhwc")
    g.add_tensor("x", x_shape, np.float32, TensorKind.INPUT)
    g.add_constant("w", rng.standard_normal((m, x_shape[3]) + tuple(attrs.kernel_shape)).astype(np.float32))
    inputs = ["x", "w"]
    if bias:
        inputs.append(g.add_constant("b", rng.standard_normal(m).astype(np.float32)).name)
    if attrs.epilogue.residual:  # y's shape, from the conv's own shape inference
        probe = g.add_op(OpKind.CONV, dataclasses.replace(attrs, epilogue=Epilogue()), inputs, ["probe"])
        shape = g.tensor("probe").shape
        g.remove_op(probe)
        g.add_tensor("r", shape, np.float32, TensorKind.INPUT)
        inputs.append("r")
    g.add_op(OpKind.CONV, attrs, inputs, ["y"], name=name)
    g.outputs = ["y"]
    return g


def foreign_assembly(plan: Any, cpu: str, features: str) -> tuple[str, bytes]:
    """(assembly, object) of ``plan``'s module compiled for another CPU, never run: how tests check kernels
    whose instructions this machine may lack (executing one aborts the process)."""
    import llvmlite.binding as llvm
    from convc.codegen.jit import Target
    from convc.codegen.module import ModuleEmitter
    target = Target(Target.host().triple, cpu, features)
    module = llvm.parse_assembly(str(ModuleEmitter(plan, target=target, threads=2).emit().ir_module))
    tm = llvm.Target.from_triple(target.triple).create_target_machine(cpu=cpu, features=features, opt=3)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(module, pb)
    return tm.emit_assembly(module), tm.emit_object(module)
