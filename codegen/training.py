"""Code generation for the training step (and for inference on the training state).

The module is the ordinary one (codegen/module.py): one function per kernel and the entry point
``convc_run(ctx, inputs, outputs)``. What differs is where the weights are: in a training step they
are inputs that change every call, so a Conv or Gemm whose weight is not a compile-time constant
goes to the kernels that read it at run time (codegen/kernels/conv_grad.py, gemm_grad.py) instead
of the inference kernels that pack constant weights at compile time.
"""
from __future__ import annotations

from typing import Callable

from convc.ir import Op, TensorKind
from convc.ops import OpKind
from convc.passes.pipeline import Plan
from convc.codegen.module import KernelCall, ModuleEmitter, NativeModule

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
        from convc.codegen.kernels.conv_grad import emit_conv_runtime
        from convc.codegen.kernels.gemm_grad import emit_gemm_runtime

        def constant(i: int) -> bool:
            return self.tensor(op.inputs[i]).kind is TensorKind.CONSTANT

        if op.kind is OpKind.CONV and not constant(1):
            return emit_conv_runtime
        if op.kind is OpKind.GEMM and (not constant(1) or op.attrs.trans_a):
            return emit_gemm_runtime
        if op.kind is OpKind.MATMUL and all(len(self.tensor(t).shape) == 2 for t in op.inputs):
            return emit_gemm_runtime
        return super().emitter_for(op)


class Engine:
    """The JIT-compiled module of a training step; engines are shared by identical modules.

    Like ``convc.codegen.jit.JitEngine`` but with the IR optimization level as a knob: a training
    module is three times an inference module, and LLVM's O3 pipeline dominates its compile time."""

    _cache: dict[tuple[str, int], "Engine"] = {}

    def __init__(self, ir_text: str, speed: int):
        import llvmlite.binding as llvm
        from convc.codegen.jit import Target, optimize, parse
        self.target = Target.host()
        tm = self.target.machine()
        self.module = parse(ir_text, self.target, tm)
        optimize(self.module, tm, speed=speed)
        self.engine = llvm.create_mcjit_compiler(self.module, self.target.machine())
        self.engine.finalize_object()
        self.engine.run_static_constructors()

    @classmethod
    def get(cls, ir_text: str, speed: int = OPT_LEVEL) -> "Engine":
        import hashlib
        key = (hashlib.sha256(ir_text.encode()).hexdigest(), speed)
        if key not in cls._cache:
            cls._cache[key] = cls(ir_text, speed)
        return cls._cache[key]

    def address(self, name: str) -> int:
        from convc.errors import CompileError
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"symbol {name!r} is missing from the compiled module")
        return addr


def emit_training_module(plan: Plan, name: str = "convc_train", instrument: bool = False) -> NativeModule:
    from convc.codegen import kernels  # noqa: F401  (registers the emitters)
    return TrainingEmitter(plan, name, instrument).emit()


def compile_graph(graph, *, in_place: bool = True):
    """Compile ``graph`` as it is (no inference passes: weights stay wherever the graph keeps them)
    with the training emitter; returns a ``CompiledModel``. For tests of the training kernels and
    for graphs built by hand."""
    from convc.codegen.module import ENTRY
    from convc.passes.memory import plan_memory
    from convc.runtime import IOSpec, NativeRunner
    from convc.session import CompiledModel
    order = graph.ops()
    plan = Plan(graph, order, plan_memory(graph, order, in_place=in_place))
    native = emit_training_module(plan, name=graph.name)
    engine = Engine.get(str(native.ir_module))
    specs = [[IOSpec(n, graph.tensor(n).shape, graph.tensor(n).dtype) for n in names]
             for names in (native.input_names, native.output_names)]
    runner = NativeRunner(engine.address(ENTRY), native.arena_bytes, native.constants, *specs, keepalive=engine,
                          kernel_names=[op for op, _ in native.kernel_names])
    return CompiledModel(runner, graph)
