"""Code generation for the training step (and for inference on the training state).

The module is the ordinary one (codegen/module.py): one function per kernel and the entry point
``convc_run(ctx, inputs, outputs)``. What differs is where the weights are: in a training step they
are inputs that change every call, so a Conv or Gemm whose weight is not a compile-time constant
goes to the kernels that read it at run time (codegen/kernels/conv_grad.py, gemm_grad.py) instead
of the inference kernels that pack constant weights at compile time.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from convc.codegen.module import KernelCall, ModuleEmitter, NativeModule
from convc.passes.pipeline import Plan

from convc.ir import Op, TensorKind
from convc.ops import OpKind
from convc.options import CompileOptions

OPT_LEVEL = 2  # LLVM IR optimization level of training modules (O3 compiles slower, runs no faster)


class TrainingEmitter(ModuleEmitter):
    """A ModuleEmitter that sends ops with run-time weights to the run-time-weight kernels.

    Its kernels are ``noinline``: a training step has three times the kernels of an inference
    model, each called once, and inlining them all into the entry point made LLVM's optimizer
    superlinear (18 s instead of 3 s for a two-conv CNN); a call per kernel costs nothing.
    """

    def function(self, base: str, n_args: int, parallel: bool = False):
        fn, b = super().function(base, n_args, parallel)
        fn.attributes.add("noinline")
        return fn, b

    def emitter_for(self, op: Op) -> Callable[[ModuleEmitter, Op], KernelCall] | None:
        from convc.codegen.kernels.gemm_grad import emit_gemm_runtime
        # a Conv's run-time-weight kernel is its RUNTIME_WEIGHTS algorithm (passes/kernel_selection.py)
        if op.kind is OpKind.GEMM and (self.tensor(op.inputs[1]).kind is not TensorKind.CONSTANT or op.attrs.trans_a):
            return emit_gemm_runtime
        if op.kind is OpKind.MATMUL and all(len(self.tensor(t).shape) == 2 for t in op.inputs):
            return emit_gemm_runtime
        return super().emitter_for(op)


def machine_code_cached(native: NativeModule, *, threads: int, instrument: bool = False,
                        cache: bool | None = None) -> bytes:
    """The object code of a training module, through the on-disk compile cache (codegen/cache.py).

    The key hashes the IR text itself (with the constant table and the cache's environment: CPU,
    versions, compiler sources): unlike an inference model, the parameters are not in the code, so
    a model trained from other initial weights reuses the same entry."""
    import hashlib
    import json

    from convc.codegen.blob import metadata, used_constants
    from convc.codegen.target import resolve_target
    from convc.codegen.cache import _safe, cache_dir, environment, lookup, store
    from convc.codegen.jit import machine_code
    ir_text = str(native.ir_module)
    root = cache_dir(cache)
    key = None
    if root is not None:
        h = hashlib.sha256(json.dumps({**environment(threads, instrument), "training": OPT_LEVEL},
                                      sort_keys=True).encode())
        h.update(ir_text.encode())
        for c in native.constants:
            a = np.ascontiguousarray(c)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B") if a.size else b"")
        key = "train-" + h.hexdigest()
        art = lookup(root, key)
        if art is not None:
            return art.obj
    obj = machine_code(ir_text, speed=OPT_LEVEL)
    if root is not None:
        meta = metadata(native, resolve_target("native"), [], [], {}, {"instrumented": bool(instrument)})
        _safe(lambda: store(root, key, meta, obj, used_constants(native)))
    return obj


def emit_training_module(plan: Plan, name: str = "convc_train", instrument: bool = False,
                         threads: int = 1) -> NativeModule:
    from convc.codegen import kernels  # noqa: F401  (registers the emitters)
    return TrainingEmitter(plan, name, instrument, threads).emit()


def jit_training_plan(plan: Plan, options: CompileOptions):
    """(ObjectEngine, NativeModule) of ``plan`` compiled as it is with the training emitter, through
    the compile cache (``machine_code_cached``). The driver (convc/driver.py) makes the model."""
    from convc.codegen.jit import ObjectEngine
    native = emit_training_module(plan, name=plan.graph.name, instrument=options.instrument, threads=options.threads)
    obj = machine_code_cached(native, threads=options.threads, instrument=options.instrument, cache=options.cache)
    return ObjectEngine(obj), native
