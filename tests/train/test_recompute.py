"""BatchNorm outputs and their ReLU / ReLU6 outputs recomputed in the backward (passes/autodiff/recompute.py)
instead of kept from the forward: the same gradients bit for bit, a smaller arena, and the BatchNormApply
kernel equal to BatchNormTrain's Y."""
from __future__ import annotations

import numpy as np
import pytest
from convc.driver import compile_training_graph
from convc.frontend.onnx import import_onnx
from convc.passes.autodiff.recompute import Recompute
from convc.passes.autodiff.training import build_training

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.norm import BatchNormAttrs
from convc.ops.norm_grad import BatchNormApplyAttrs, apply_reference
from convc.options import CompileOptions
from train import nets

SHAPE = (6, 3, 7, 9)  # odd widths: vector remainders in every elementwise pass
INF = float("inf")


def mobile_net():
    """Conv-BN-ReLU6, depthwise Conv-BN-ReLU, 1x1 Conv-BN whose output a 3x3 conv reads, Conv-BN-ReLU,
    global pooling, linear: every kind of tensor the recomputation rebuilds."""
    n = nets.Net(3)
    zero, six = n.init("relu6.min", np.array(0.0)), n.init("relu6.max", np.array(6.0))
    x = n.node("Clip", [n.bn(n.conv("input", "c1", 3, 8, bias=False), "bn1", 8), zero, six])
    x = n.node("Relu", [n.bn(n.conv(x, "dw", 8, 8, group=8, bias=False), "bn2", 8)])
    x = n.bn(n.conv(x, "pw", 8, 6, k=1, pad=0, bias=False), "bn3", 6)
    x = n.node("Relu", [n.bn(n.conv(x, "c4", 6, 6, stride=2), "bn4", 6)])
    x = n.gemm(n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1), "fc", 6, 4)
    return n.model(list(SHAPE), x, [SHAPE[0], 4], "mobile")


@pytest.fixture(scope="module")
def model():
    return mobile_net()


def _step(model):
    return build_training(import_onnx(model, batch=SHAPE[0]), loss="cross_entropy",
                          optimizer=convc.optim.SGD(0.1, momentum=0.9))


def test_recomputed_tensors_die_in_the_forward(model):
    step = _step(model)
    order, g = step.plan.order, step.plan.graph
    applies = [op for op in order if op.kind is OpKind.BATCH_NORM_APPLY]
    # ReLU6 after bn1, ReLU after bn2, bn3's own output (the next conv's weight gradient reads it), the last
    # ReLU (its gradient reads its output); the last one's consumer, global pooling, reads nothing back
    assert sorted((a.attrs.min, a.attrs.max) for a in applies) == [(-INF, INF), (0.0, 6.0), (0.0, INF), (0.0, INF)]
    position = {op.name: i for i, op in enumerate(order)}
    first_backward = min(position[op.name] for op in order if op.kind is OpKind.SOFTMAX_CROSS_ENTROPY_GRAD)
    for a in applies:
        # rebuilt from the conv output BatchNormTrain read, late in the backward
        bn = g.producer(a.inputs[3])
        assert bn.kind is OpKind.BATCH_NORM_TRAIN and a.inputs[0] == bn.inputs[0]
        assert position[a.name] > first_backward
        # the forward's own tensor (BN output or the activation's) is read by forward ops only
        stands_for = bn.outputs[0] if a.attrs.min == -INF else g.consumers(bn.outputs[0])[0].outputs[0]
        assert all(position[r.name] < first_backward for r in g.consumers(stands_for))


def test_recomputation_shrinks_the_arena(model, monkeypatch):
    recomputed = _step(model).plan.memory.arena_bytes
    monkeypatch.setattr(Recompute, "view", lambda self, op, emit: op)
    kept = _step(model).plan.memory.arena_bytes
    # bn1..bn3's conv outputs no longer have their BN and activation outputs alive beside them
    assert recomputed < 0.8 * kept, (recomputed, kept)


@pytest.mark.slow
def test_same_step_bit_for_bit(model, monkeypatch, rng):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    y = rng.integers(0, 4, SHAPE[0])

    def train(threads: int):
        t = convc.Trainer(model, input_shape=SHAPE, optimizer=convc.optim.SGD(0.1, momentum=0.9), threads=threads)
        losses = [t.step(x, y) for _ in range(2)]
        return losses, {k: v.copy() for k, v in t.state_dict().items()}

    recomputed = train(2)  # two threads: BatchNormApply splits the channels as BatchNormTrain does
    monkeypatch.setattr(Recompute, "view", lambda self, op, emit: op)
    kept = train(2)
    assert recomputed[0] == kept[0]
    for k, v in kept[1].items():
        np.testing.assert_array_equal(recomputed[1][k], v, err_msg=k)


@pytest.mark.slow
def test_gradients_match_finite_differences(model, rng):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    result = convc.gradcheck(model, x, samples=6, step=2)
    assert result.ok, str(result)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_apply_is_the_forward_bit_for_bit(rng, threads):
    x = (rng.standard_normal((5, 11, 7, 9)) * 3 + 1).astype(np.float32)
    scale = (rng.standard_normal(11) + 1).astype(np.float32)
    bias = rng.standard_normal(11).astype(np.float32)
    g = Graph("bn_apply")
    for name, v in (("x", x), ("scale", scale), ("bias", bias)):
        g.add_tensor(name, v.shape, np.float32, TensorKind.INPUT)
    bn = g.add_op(OpKind.BATCH_NORM_TRAIN, BatchNormAttrs(epsilon=1e-5), ["x", "scale", "bias"], name="bn")
    y, mean, invstd = bn.outputs
    clamps = [BatchNormApplyAttrs(), BatchNormApplyAttrs(0.0, INF), BatchNormApplyAttrs(0.0, 6.0)]
    applied = [g.add_op(OpKind.BATCH_NORM_APPLY, a, ["x", "scale", "bias", mean, invstd], name=f"apply{i}").outputs[0]
               for i, a in enumerate(clamps)]
    g.outputs = [y, mean, invstd] + applied
    got = compile_training_graph(g, CompileOptions(threads=threads)).run({"x": x, "scale": scale, "bias": bias})
    np.testing.assert_array_equal(got[applied[0]], got[y])
    np.testing.assert_array_equal(got[applied[1]], np.maximum(got[y], 0))
    np.testing.assert_array_equal(got[applied[2]], np.clip(got[y], 0, 6))
    for a, out in zip(clamps, applied):  # the numpy reference: the same float32 arithmetic
        ref = apply_reference(a, x, scale, bias, got[mean], got[invstd])[0]
        np.testing.assert_allclose(got[out], ref, rtol=0, atol=1e-5)
