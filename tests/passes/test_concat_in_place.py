"""Zero-copy Concat (passes/memory.py plan_concats): producers write straight into their slice of the
Concat's output, nested Concats chain into one buffer, and the Concat copies only what it must.
Numbers against onnxruntime at batch 1 and 16, odd sizes, 1 and 2 threads; the plans' placements
asserted; the static check (passes/memory_check.py) and the run-time arena check on the same nets."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from concat_nets import Builder, densenet_like, inception_like, unet_like
from helpers import assert_close, run_onnxruntime

import convc
from convc.errors import GraphError
from convc.frontend.onnx import import_onnx
from convc.ops import NoAttrs, OpKind
from convc.passes import memory
from convc.passes.memory import View, plan_memory
from convc.passes.memory_check import check_memory_plan
from convc.passes.pipeline import pipeline

RTOL = 1e-4  # Winograd F(4x4) 3x3 convs are within ~1e-5 of the direct conv


def input_shape(m: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)


def check_against_onnxruntime(m: onnx.ModelProto, threads: int) -> None:
    x = np.random.default_rng(7).standard_normal(input_shape(m)).astype(np.float32)
    expected = run_onnxruntime(m, {"x": x})
    out = convc.compile(m, threads=threads, cache=False).run({"x": x})
    (actual,) = out.values()
    assert_close(actual, expected, RTOL, f"{m.graph.name} against onnxruntime")


def plan_of(m: onnx.ModelProto):
    return pipeline(import_onnx(m, batch=input_shape(m)[0]))


def concats(plan) -> list:
    return [op for op in plan.order if op.kind is OpKind.CONCAT]


def producer_kind(plan, t: str) -> OpKind:
    return plan.graph.producer(t).kind


NETS = [(densenet_like, 1, 15), (densenet_like, 16, 9), (inception_like, 1, 13), (inception_like, 16, 7),
        (unet_like, 1, 20), (unet_like, 16, 12)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make, batch, hw", NETS, ids=[f"{f.__name__}-b{b}-{hw}px" for f, b, hw in NETS])
@pytest.mark.slow
def test_outputs_match_onnxruntime(make, batch, hw, threads):
    check_against_onnxruntime(make(batch, hw), threads)


@pytest.mark.parametrize("batch", [1, 16])
def test_densenet_block_is_one_buffer(batch):
    """Every Concat of a block is free, the one whose first input is the transition's AveragePool
    output too (the channels-last pool writes its pixels a row apart); each block's tensors live
    in its last Concat's buffer."""
    plan = plan_of(densenet_like(batch, 9))
    mem = plan.memory
    ops = concats(plan)
    assert len(ops) == 6  # two blocks of three layers
    assert [op.name for op in ops if op.name not in mem.concat_aliases] == []
    pooled = [t for op in ops for t in op.inputs if producer_kind(plan, t) is OpKind.AVERAGE_POOL]
    assert len(pooled) == 1 and not mem.placed[pooled[0]].view.contiguous
    convs = [t for op in ops for t in op.inputs if producer_kind(plan, t) is OpKind.CONV]
    assert convs and all(t in mem.placed for t in convs)
    roots = {mem.placed[t].root for t in convs}
    assert roots == {ops[2].outputs[0], ops[5].outputs[0]}  # the last Concat of each block
    # channels last: a conv's slice is rows of its channels, one pixel's channels of the block apart
    last = plan.graph.tensor(ops[2].outputs[0])
    view = mem.placed[ops[2].inputs[1]].view
    assert (view.rows, view.run, view.stride) == (batch * 9 * 9, 12, last.shape[-1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.slow
def test_wide_concat_buffer_rows_are_padded(threads, monkeypatch):
    """A channels-last Concat buffer of 128 channels (512-byte rows) read only by kernels that take
    a stride (the Transpose before a channels-first BatchNorm) gets one cache line more per row; its
    branches write rows 144 floats apart."""
    m = inception_like(3, 9, widths=((32, 48, 24, 24),), bn_head=True)
    plan = plan_of(m)
    (op,) = concats(plan)
    (y,) = op.outputs
    assert plan.memory.padded[y] == View(0, 3 * 9 * 9, 128, 144)
    assert [plan.memory.placed[t].view.stride for t in op.inputs] == [144] * 4
    assert [r.nbytes for r in plan.memory.live_ranges if r.name == y] == [((3 * 81 - 1) * 144 + 128) * 4]
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    check_against_onnxruntime(m, threads)


def test_densenet_torchvision_form_places_each_feature_once():
    """Every layer concatenates all earlier features again: a feature is placed in one Concat (the
    block's last, visited first) and copied by the earlier ones, which read it at its stride."""
    plan = plan_of(densenet_like(2, 9, nested=False))
    mem = plan.memory
    ops = concats(plan)
    for block in (ops[:3], ops[3:]):
        assert block[-1].name in mem.concat_aliases or \
            producer_kind(plan, block[-1].inputs[0]) is OpKind.AVERAGE_POOL
        assert all(mem.placed[t].concat == block[-1].name for t in block[-1].inputs if t in mem.placed)
        assert not any(op.name in mem.concat_aliases for op in block[:-1])
    check_memory_plan(plan.graph, plan.order, mem)


@pytest.mark.parametrize("batch", [1, 16])
def test_inception_concats_copy_nothing(batch):
    plan = plan_of(inception_like(batch, 7))
    ops = concats(plan)
    assert len(ops) == 2 and all(op.name in plan.memory.concat_aliases for op in ops)
    assert all(plan.memory.placed[t].concat == op.name for op in ops for t in op.inputs)


def test_unet_skip_read_by_a_pool_is_copied():
    """The skip is also read by the MaxPool below it, a kernel that reads contiguous rows: it keeps
    its own buffer and the Concat copies it; the upsampled conv output is written in place."""
    plan = plan_of(unet_like(16, 12))
    mem = plan.memory
    for op in concats(plan):
        up, skip = op.inputs
        assert op.name not in mem.concat_aliases
        assert mem.placed[up].concat == op.name
        assert skip not in mem.placed
        assert any(c.kind is OpKind.MAX_POOL for c in plan.graph.consumers(skip))


def gemm_concat(relu_after: bool) -> onnx.ModelProto:
    """Two Gemms at batch 1 concatenated along axis 1 (a contiguous slice: any producer can write
    it), the first also read by a Relu when ``relu_after``; and the graph input as a third input."""
    n = Builder(3)
    a = n.node("Gemm", ["x", n.const(n.rng.standard_normal((24, 37)) * 0.2)], transB=1)
    b = n.node("Gemm", ["x", n.const(n.rng.standard_normal((11, 37)) * 0.2)], transB=1)
    y = n.node("Concat", [a, "x", b], axis=1)
    outs = [n.node("Relu", [y])]
    if relu_after:
        outs.append(n.node("Relu", [a]))
    return n.model((1, 37), outs, "gemm_concat")


@pytest.mark.parametrize("relu_after", [False, True])
def test_contiguous_slices_take_any_producer_and_graph_inputs_are_copied(relu_after):
    m = gemm_concat(relu_after)
    plan = plan_of(m)
    mem = plan.memory
    (op,) = concats(plan)
    a, x, b = op.inputs
    assert mem.placed[a].view == View(0, 1, 24, 24) and mem.placed[b].view == View(61, 1, 11, 11)
    assert x not in mem.placed and op.name not in mem.concat_aliases  # a graph input: copied
    check_memory_plan(plan.graph, plan.order, mem)
    x_in = np.random.default_rng(0).standard_normal((1, 37)).astype(np.float32)
    expected = dict(zip([o.name for o in m.graph.output], _ort_all(m, {"x": x_in})))
    got = convc.compile(m, threads=1, cache=False).run({"x": x_in})
    for name, value in expected.items():
        assert_close(got[name], value, RTOL, name)


def _ort_all(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_concat_that_is_a_graph_output_copies():
    """A graph output lives in the caller's array, not the arena: its inputs keep their buffers."""
    n = Builder(4)
    a = n.node("Gemm", ["x", n.const(n.rng.standard_normal((6, 9)))], transB=1)
    b = n.node("Relu", [n.node("Gemm", ["x", n.const(n.rng.standard_normal((5, 9)))], transB=1)])
    m = n.model((1, 9), [n.node("Concat", [a, b], axis=1)], "concat_out")
    plan = plan_of(m)
    assert len(concats(plan)) == 1
    assert not plan.memory.placed and not plan.memory.concat_aliases
    check_against_onnxruntime(m, 1)


def test_training_graphs_keep_their_copies():
    """A graph with parameters (a training step) is planned without placements unless asked."""
    plan = plan_of(densenet_like(1, 9))
    g = plan.graph.copy()
    g.tensor(next(t.name for t in g.tensors() if t.data is not None)).kind = memory.TensorKind.PARAMETER
    assert not plan_memory(g, plan.order).placed
    assert plan_memory(g, plan.order, concats=True).placed


@pytest.mark.parametrize("batch", [1, 2])
def test_training_step_through_concat_keeps_its_copies(batch):
    """The training step of a net with a Concat (backward through it: tests/train/test_autodiff.py
    checks its gradients) places nothing, even at batch 1 where the slices are contiguous."""
    from convc.passes.autodiff.training import build_training
    from train import nets
    step = build_training(import_onnx(nets.residual_net(), batch=batch), loss="cross_entropy")
    assert any(op.kind is OpKind.CONCAT for op in step.plan.order)
    assert not step.plan.memory.placed and not step.plan.memory.concat_aliases


def test_a_planner_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr(memory, "CONCAT_IN_PLACE", False)
    plan = plan_of(inception_like(1, 7))
    assert not plan.memory.placed and not plan.memory.concat_aliases


def test_static_check_accepts_the_plans_and_catches_overlaps():
    plan = plan_of(inception_like(2, 7))
    g, order, mem = plan.graph, plan.order, plan.memory
    check_memory_plan(g, order, mem)
    op = concats(plan)[0]
    first, second = op.inputs[:2]
    # the second branch moved onto the first one's channels: both are live until the Concat
    moved = dataclasses.replace(mem.placed[second], view=mem.placed[first].view)
    bad = dataclasses.replace(mem, placed={**mem.placed, second: moved})
    with pytest.raises(GraphError, match="share elements|its slice of"):
        check_memory_plan(g, order, bad)
    # the bytes of a placed tensor somewhere other than its slice
    buffers = dict(mem.buffers)
    buffers[second] = dataclasses.replace(buffers[second], index=buffers[first].index)
    with pytest.raises(GraphError, match="not at float"):
        check_memory_plan(g, order, dataclasses.replace(mem, buffers=buffers))
    # a Concat said to emit no code while one of its inputs is not written in place
    rest = {k: v for k, v in mem.placed.items() if k != second}
    with pytest.raises(GraphError, match="emits no code"):
        check_memory_plan(g, order, dataclasses.replace(mem, placed=rest))
    # a strided slice read by a kernel that reads contiguous rows
    g2 = g.copy()
    g2.add_op(OpKind.RELU, NoAttrs(), [first], name="extra_reader")
    with pytest.raises(GraphError, match="read it contiguous"):
        check_memory_plan(g2, order + [g2.op("extra_reader")], mem)


NETS_CHECKED = [(densenet_like, 2, 9), (inception_like, 2, 7), (unet_like, 2, 12), (densenet_like, 1, 15)]


@pytest.mark.parametrize("make, batch, hw", NETS_CHECKED,
                         ids=[f"{f.__name__}-b{b}-{hw}px" for f, b, hw in NETS_CHECKED])
@pytest.mark.slow
def test_arena_checked_builds(make, batch, hw, monkeypatch):
    """CONVC_CHECK_ARENA=1: the static plan check and the run-time canary/hash checks pass with
    producers writing into Concat slices (a strided slice is scanned row by row, not across its
    neighbours, which are written later)."""
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    check_against_onnxruntime(make(batch, hw), 2)


@pytest.mark.slow
def test_arena_check_catches_a_conv_that_ignores_its_slice_stride(monkeypatch):
    """The conv of the second Inception branch writes its Concat slice as if it were contiguous,
    over the first branch's rows: the run-time check hashes the slices written before a kernel
    that writes into the same buffer, and names the one it changed."""
    from convc.codegen import kernels  # noqa: F401  (registers the emitters)
    from convc.codegen.arena_check import ArenaError
    from convc.codegen.module import EMITTERS
    m = inception_like(2, 7)
    plan = plan_of(m)
    first, second = concats(plan)[0].inputs[:2]
    victim = plan.graph.producer(second).name
    real = EMITTERS[OpKind.CONV]

    def careless(em, op):
        if op.name != victim:
            return real(em, op)
        mem = em.plan.memory
        mem.view = lambda name, size: memory.contiguous(size)  # this kernel alone sees no stride
        try:
            return real(em, op)
        finally:
            del mem.view

    monkeypatch.setitem(EMITTERS, OpKind.CONV, careless)
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    x = np.random.default_rng(7).standard_normal(input_shape(m)).astype(np.float32)
    with pytest.raises(ArenaError, match=f"kernel {victim!r} changed {first!r}"):
        convc.compile(m, threads=1, cache=False).run({"x": x})


@pytest.mark.parametrize("batch", [1, 3])
def test_transpose_writes_its_slice_of_a_channels_first_concat(batch, monkeypatch):
    """A Concat left channels first (its Softmax input has no channels-last form) takes the conv's
    output through the Transpose back to NCHW, which writes straight into its slice: contiguous at
    batch 1 (the Softmax's slice too), rows of 5 x 9 x 7 floats apart at batch 3 (the Softmax's
    kernel writes contiguous only: copied)."""
    n = Builder(5)
    a = n.node("Softmax", ["x"], axis=1)
    b = n.conv("x", 4, 5, 3)
    m = n.model((batch, 4, 9, 7), [n.node("Relu", [n.node("Concat", [a, b], axis=1)])], "softmax_concat")
    plan = plan_of(m)
    (op,) = concats(plan)
    a_t, b_t = op.inputs
    assert producer_kind(plan, b_t) is OpKind.TRANSPOSE
    view = plan.memory.placed[b_t].view
    if batch == 1:
        assert view.contiguous and a_t in plan.memory.placed and op.name in plan.memory.concat_aliases
    else:
        assert (view.rows, view.run, view.stride) == (3, 5 * 63, 9 * 63) and a_t not in plan.memory.placed
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    check_against_onnxruntime(m, 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_batchnorm_after_concat_runs_channels_last_and_reads_the_concat_in_place(threads):
    """DenseNet's BatchNorm + ReLU after each Concat (an unfolded per-channel Mul and Add) runs
    channels last with its scale and shift permuted, so no Transpose sits between the blocks (only
    the model's input and output are transposed), and the Mul reads the Concat nested in the next
    one at its row stride instead of the Concat copying it."""
    m = densenet_like(16, 23)
    plan = plan_of(m)
    transposes = [op for op in plan.order if op.kind is OpKind.TRANSPOSE]
    assert len(transposes) <= 2, [op.name for op in transposes]
    muls = [op for op in plan.order if op.kind is OpKind.MUL]
    assert muls and all(plan.graph.tensor(op.outputs[0]).shape[-1] > 3 for op in muls)  # channels last
    strided = [op for op in muls if not plan.memory.view(op.inputs[0], plan.graph.tensor(op.inputs[0]).size).contiguous]
    assert strided, "a Mul reads a Concat nested in another one, in place"
    assert all(op.name in plan.memory.concat_aliases for op in concats(plan))  # no Concat copies
    check_against_onnxruntime(m, threads)


def test_the_strided_readers_are_the_broadcast_kernels():
    """passes/memory.py lists the arithmetic ops that read strided inputs; their kernel is
    codegen/kernels/elementwise.py's broadcast kernel, and the list must not drift from it."""
    from convc.codegen.kernels.elementwise import BINARY, emit_broadcast
    from convc.codegen.module import EMITTERS
    assert memory.BROADCAST_ARITHMETIC == set(BINARY)
    assert all(EMITTERS[k] is emit_broadcast for k in BINARY)


def test_convs_writing_into_concats_of_other_widths_share_one_function():
    """Two identical 3x3 convs write their slices of Concats of different widths (other row strides):
    the stride is read at run time, so they are one function (DenseNet's layers, before their
    Concats chained, each had its own), and every layout change calls the one out-of-line transpose
    (codegen/kernels/shape.py transpose_tiles). The numbers match onnxruntime."""
    from convc.codegen.module import emit_module
    n = Builder(3)
    stem = n.conv("x", 3, 24, 3)
    a, p = n.conv(stem, 24, 12, 3), n.conv(stem, 24, 16, 1)
    b, q = n.conv(stem, 24, 12, 3), n.conv(stem, 24, 40, 1)
    outs = [n.node("GlobalAveragePool", [n.node("Concat", pair, axis=1)]) for pair in ([a, p], [b, q])]
    m = n.model((16, 3, 21, 19), outs, "two_widths")
    plan = plan_of(m)
    firsts = [op.inputs[0] for op in concats(plan)]  # the 3x3 convs' outputs, channels last
    assert all(producer_kind(plan, t) is OpKind.CONV for t in firsts)
    strides = {plan.memory.view(t, plan.graph.tensor(t).size).stride for t in firsts}
    assert len(strides) == 2, "the two convs write rows of different strides"
    native = emit_module(plan, threads=2)
    producers = {plan.graph.producer(t).name for t in firsts}
    fns = {op: fn for op, fn in native.kernel_names if op in producers}
    assert len(fns) == 2 and len(set(fns.values())) == 1, fns
    assert len([f for f in native.ir_module.functions if f.name.startswith("transpose_tiles")]) <= 1
    x = np.random.default_rng(5).standard_normal((16, 3, 21, 19)).astype(np.float32)
    import onnxruntime as ort
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = convc.compile(m, threads=2, cache=False).run({"x": x})
    for name, expected in zip([o.name for o in m.graph.output], want):
        assert_close(got[name], expected, RTOL, name)
