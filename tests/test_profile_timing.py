"""Per-layer timestamps hold all of a parallel kernel's work, whichever thread does it.

A Relu is compiled with a stand-in parallel kernel whose tasks spin on the monotonic clock, task 1
(SPIN_NS) much longer than task 0 (long enough for a worker to wake and claim task 1), and write
their own start and end stamps and thread into the output. The entry
point's stamps (taken on the calling thread around ``convc_parallel``) must bracket every task's
stamps: a layer's time is never shorter than the work its slowest thread did. No timed bound: the
spin makes task 1 last at least SPIN_NS however loaded the machine is, and the assertions compare
stamps of one clock."""
from __future__ import annotations

import time

import numpy as np
import pytest
from llvmlite import ir

import convc.codegen.kernels  # noqa: F401  (registers the real emitters, one of which the test replaces)
import convc.codegen.module as module
from convc.codegen.llvm_utils import I64, PTR, gep, i64
from convc.compiler import compile_graph
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind

SPIN_NS = (5_000_000, 20_000_000)  # per task: task 1 does most of the work
SLOTS = 4  # int64 per task in the output: start, end, thread (pthread_self), unused


def unbalanced_kernel(em: module.ModuleEmitter, op) -> module.KernelCall:
    """y (as int64) [SLOTS * task + 0, 1, 2] = the task's start, end and thread; each task spins
    SPIN_NS[task] between its stamps."""
    fn, b = em.function("unbalanced_spin", 2, parallel=True)
    y, task = fn.args[1], fn.args[-2]
    slot = b.mul(task, i64(SLOTS))
    timespec = b.alloca(ir.ArrayType(I64, 2), name="timespec")
    start = module.monotonic_ns(b, timespec)
    spin_ns = b.select(b.icmp_unsigned("==", task, i64(1)), i64(SPIN_NS[1]), i64(SPIN_NS[0]))
    b.store(start, gep(b, y, slot, I64))
    spin = b.append_basic_block("spin")
    done = b.append_basic_block("done")
    b.branch(spin)
    b.position_at_end(spin)
    now = module.monotonic_ns(b, timespec)
    b.cbranch(b.icmp_signed("<", b.sub(now, start), spin_ns), spin, done)
    b.position_at_end(done)
    b.store(now, gep(b, y, b.add(slot, i64(1)), I64))
    self_ = em.module.globals.get("pthread_self") or ir.Function(em.module, ir.FunctionType(I64, []), "pthread_self")
    b.store(b.call(self_, []), gep(b, y, b.add(slot, i64(2)), I64))
    b.ret_void()
    return module.KernelCall(fn, [op.inputs[0], op.outputs[0]])


@pytest.fixture(scope="module")
def unbalanced_model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(module.EMITTERS, OpKind.RELU, unbalanced_kernel)
        mp.setattr(module, "PARALLEL_MIN_WORK", 0)  # hand even this tiny op to the pool
        g = Graph("unbalanced")
        g.add_tensor("x", (4 * SLOTS,), np.float32, TensorKind.INPUT)
        g.add_op(OpKind.RELU, NoAttrs(), ["x"], ["y"])
        g.outputs = ["y"]
        yield compile_graph(g, threads=2, instrument=True, cache=False)


def test_layer_stamps_bracket_every_threads_work(unbalanced_model):
    runner = unbalanced_model._runner
    assert runner.threads == 2 and len(runner.kernel_names) == 1
    x = np.zeros(4 * SLOTS, np.float32)
    for _ in range(3):  # the worker may be spinning, yielding or asleep when a call starts
        before = time.monotonic_ns()
        (y,), ctx = runner.run([x], keep_context=True)
        after = time.monotonic_ns()
        try:
            layer_start, layer_end = (int(t) for t in ctx.timestamps)
        finally:
            runner._free.append(ctx)
        tasks = y.view(np.int64).reshape(2, SLOTS)  # (start, end, thread, unused) per task
        spun = tasks[:, 1] - tasks[:, 0]
        assert (spun >= SPIN_NS).all(), f"a task had not finished when the run returned: {spun} ns"
        assert before <= layer_start <= tasks[:, 0].min(), "the layer starts before any task"
        assert tasks[:, 1].max() <= layer_end <= after, "the layer ends after its last task"
        assert layer_end - layer_start >= SPIN_NS[1], "the layer's time holds task 1's spin"


def test_run_timed_reports_the_slow_tasks_time(unbalanced_model):
    _, times = unbalanced_model.run_timed({"x": np.zeros(4 * SLOTS, np.float32)})
    (seconds,) = times.values()
    assert seconds >= SPIN_NS[1] * 1e-9
