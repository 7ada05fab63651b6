"""The training convs (forward with run-time weights, dX, dW; codegen/kernels/conv_grad.py and
conv_grad_weight.py) take their
sizes from a size table: the convs of a network's stages that share a window (kernel, strides, pads)
are one compiled kernel module per kind, and they compute what the reference does on 1 and 2 threads,
at odd sizes too (vector remainders, odd channel counts)."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.codegen.module import emit_module
from convc.codegen.split import split_module
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.options import CompileOptions
from convc.passes.autodiff.core import backward
from convc.passes.pipeline import AS_BUILT, pipeline
from convc.reference import run_reference
from train.grad_helpers import KERNEL_TOL, rel_error

# the windows of a CIFAR ResNet's convs: (kernel, strides, pads)
S1 = ((3, 3), (1, 1), (1, 1, 1, 1))
S2 = ((3, 3), (2, 2), (1, 1, 1, 1))
PROJ = ((1, 1), (2, 2), (0, 0, 0, 0))
POINT = ((1, 1), (1, 1), (0, 0, 0, 0))

# (window, x shape, output channels): the stages of a CIFAR ResNet at small sizes; per window the
# channels (16, 32, 64: last register tiles of 4, 2, 4 rows) and pixels (whole 16-float panels) differ
STAGES = [
    (S1, (2, 16, 16, 16), 16), (S1, (2, 32, 8, 8), 32), (S1, (1, 64, 8, 8), 64),
    (S2, (2, 16, 16, 16), 32), (S2, (2, 32, 8, 8), 64),
    (PROJ, (2, 16, 16, 16), 32), (PROJ, (2, 32, 8, 8), 64),
    (POINT, (2, 16, 8, 8), 32), (POINT, (2, 32, 4, 4), 64),
]
# odd channel counts (last tiles of 1, 3 and 5 rows), pixels that leave a partial panel, a 3x2 window
ODD = [
    (S1, (3, 5, 9, 7), 7), (S1, (2, 3, 11, 5), 9), (S2, (2, 7, 9, 11), 11), (PROJ, (3, 9, 7, 9), 5),
    (POINT, (2, 5, 5, 3), 13), (((3, 2), (1, 1), (1, 0, 1, 2)), (2, 6, 7, 8), 9),
]


def conv_step_graph(convs, dw: bool = False) -> Graph:
    """Per conv: its forward with the weight an input (read at run time), dX and with ``dw`` dW."""
    g = Graph("conv_step")
    for i, ((kernel, strides, pads), xs, m) in enumerate(convs):
        x = g.add_tensor(f"x{i}", xs, np.float32, TensorKind.INPUT).name
        w = g.add_tensor(f"w{i}", (m, xs[1]) + kernel, np.float32, TensorKind.INPUT).name
        (y,) = g.add_op(OpKind.CONV, ConvAttrs(kernel, strides, pads, (1, 1), 1), [x, w], name=f"conv{i}").outputs
        g.add_tensor(f"dy{i}", g.tensor(y).shape, np.float32, TensorKind.INPUT)
        grads = backward(g, {y: f"dy{i}"}, [x, w] if dw else [x])
        g.outputs += [y, *grads.values()]
    g.inputs = [n for i in range(len(convs)) for n in (f"x{i}", f"w{i}", f"dy{i}")]
    g.verify()
    return g


def test_training_convs_of_every_stage_are_one_kernel_module_per_window():
    plan = pipeline(conv_step_graph(STAGES), options=CompileOptions(threads=2), variant=AS_BUILT)
    native = emit_module(plan, threads=2)
    assert len(native.callees) == 2 * len(STAGES)  # a forward and a dX kernel per conv
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(kernels) == 2 * 4, [m.text[:200] for m in kernels]  # forward and dX per window


def test_im2col_dw_kernels_of_every_stage_are_one_kernel_module_per_window():
    """Strided and pointwise convs (dW on im2col patches, both of its layouts): forward, dX and dW of
    each window one module each."""
    stages = [c for c in STAGES if c[0] != S1]
    plan = pipeline(conv_step_graph(stages, dw=True), options=CompileOptions(threads=2), variant=AS_BUILT)
    native = emit_module(plan, threads=2)
    assert len(native.callees) == 3 * len(stages)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(kernels) == 3 * 3, [m.text[:200] for m in kernels]


def test_shifted_dw_kernels_of_every_stage_are_one_kernel_module():
    """Stride-1 3x3 convs (dW by shifted GEMMs, conv_grad_weight.py) of 16, 32 and 64 channels:
    forward, dX and dW one module each."""
    stages = [c for c in STAGES if c[0] == S1]
    plan = pipeline(conv_step_graph(stages, dw=True), options=CompileOptions(threads=2), variant=AS_BUILT)
    native = emit_module(plan, threads=2)
    assert len(native.callees) == 3 * len(stages)
    kernels = [m for m in split_module(native.ir_module, native.callees)[1:] if m.kernels]
    assert len(kernels) == 3, [m.text[:200] for m in kernels]


@pytest.mark.parametrize("threads", [1, 2])
def test_shared_training_convs_match_the_reference(threads):
    g = conv_step_graph(STAGES + ODD, dw=True)
    rng = np.random.default_rng(threads)
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    plan = pipeline(g, options=CompileOptions(threads=threads), variant=AS_BUILT)
    from convc.driver import compile_plan
    got = compile_plan(plan, CompileOptions(threads=threads)).run(feeds)
    want = run_reference(g, {n: v.astype(np.float64) for n, v in feeds.items()})
    for name in g.outputs:
        assert got[name].shape == g.tensor(name).shape
        assert rel_error(got[name], want[name]) < KERNEL_TOL, name


def cifar_resnet_step_digest(threads: int) -> tuple[list[float], str]:
    """Three training steps of a CIFAR ResNet (width 16, batch 32, the compile benchmark's): the
    losses and a SHA-256 of every state array after them (parameters, moments, BatchNorm statistics)."""
    import hashlib
    from convc import nn
    from convc.models import cifar_resnet

    nn.manual_seed(0)
    trainer = convc.Trainer(cifar_resnet(16), input_shape=(32, 3, 32, 32), threads=threads)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(3):
        losses.append(trainer.step(rng.standard_normal((32, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 32)))
    digest = hashlib.sha256()
    for name, v in sorted(trainer._state.items()):
        digest.update(name.encode() + np.ascontiguousarray(v).tobytes())
    return losses, digest.hexdigest()


# from the kernels with every size a compile-time constant (before the size tables), on 1 and 2 threads:
# sharing the kernels between stages must not change a bit of any state array (a kernel change that
# rounds differently on purpose pins new values)
PINNED_LOSSES = [2.658267021179199, 2.498044490814209, 2.4673333168029785]
PINNED_DIGEST = "8655d40aeafbe352f349a6dde935bde447502d5494f662aee2b7cf87ad3f1e22"


@pytest.mark.slow
def test_a_cifar_resnets_training_steps_are_bit_identical_to_the_unshared_kernels():
    losses, digest = cifar_resnet_step_digest(threads=2)
    assert losses == PINNED_LOSSES and digest == PINNED_DIGEST, (losses, digest)
