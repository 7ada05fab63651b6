"""Training artifacts: ``convc compile MODEL.onnx -o train.so --train --optimizer adam``.

The library holds two modules emitted like any plan (codegen/module.py; both plans are training
variants of passes/pipeline.py, whose weights are read at run time): the training step built by
passes/autodiff (forward in training mode, loss, backward, optimizer update, in one function) and
the eval-mode forward on the training state (the plan ``convc.Trainer.predict`` runs). It is built
by the inference libraries' path (codegen/aot.py ``build_native``) with this module's C ABI. Its context owns, besides the arena, the whole training state
(learning rate, step counter, parameters, BN running statistics, optimizer moments), laid out at
64-byte aligned offsets and initialized from an image embedded with the weights; the C ABI adds

    int   convc_train_step(convc_ctx *, const float *x, const void *labels, float *loss)
    void  convc_set_learning_rate(convc_ctx *, float) / float convc_learning_rate(convc_ctx *)
    int64_t convc_steps_done(convc_ctx *)
    convc_num_state / convc_state_name / _dtype / _rank / _shape / _size(i), void *convc_state_data(convc_ctx *, i)
    int   convc_compute_gradients(convc_ctx *, const float *x, const void *labels, float *loss, int accumulate)
    int   convc_apply_gradients(convc_ctx *)
    float *convc_gradients(convc_ctx *); int64_t convc_gradients_size(void), convc_gradient_offset(i)

and ``convc_run_model`` runs the eval-mode forward on the context's current weights. The step is
the Trainer's: a step with a non-finite loss or gradient changes nothing and returns 2. The two
gradient functions are ``Trainer.compute_gradients`` / ``apply_gradients`` (passes/autodiff/training.py
``build_split``: two more modules); their gradient buffer, the batch statistics they pass and the
loss are kept in the state past the entries convc_state lists. Training
runs on the calling thread (the training kernels are generated for one thread, as in the Trainer).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from convc.codegen.aot import BuildResult, build_native, kernel_cache_root, split_native
from convc.codegen.artifacts import ALIGN
from convc.codegen.blob import align_up, blob_layout, used_constants
from convc.codegen.header import TRAINING_DECLS
from convc.codegen.llvm_utils import F32, I8, I32, I64, PTR, VOID, alloca_entry, f32, for_range, gep, i64
from convc.codegen.module import emit_module
from convc.codegen.split import merge_splits
from convc.codegen.target import resolve_target
from convc.codegen.wrapper import Wrapper
from convc.passes.autodiff.training import LOSSES as LOSS_RULES
from llvmlite import ir

from convc import abi
from convc.abi import APPLY_MODULE_PREFIX, ENTRY, GRAD_MODULE_PREFIX, MODULE_FUNCTIONS, TRAIN_MODULE_PREFIX, Slot
from convc.errors import CompileError
from convc.options import CompileOptions
from convc.runtime import IOSpec

SPEED = 2  # LLVM IR optimization level of training libraries (O3 compiles slower, runs no faster)
LOSSES = tuple(LOSS_RULES)  # the losses autodiff knows, in its order


def _rename_entry(ir_text: str, prefix: str = TRAIN_MODULE_PREFIX) -> str:
    """The training step's module: its entry and pool functions become convc_train_* (the eval
    module keeps the public names); kernels are internal, the linker renames clashes."""
    names = "|".join(MODULE_FUNCTIONS)
    return re.sub(rf'@"({names})"|@({names})\b', lambda m: f'@"{prefix}{m.group(1) or m.group(2)}"',
                  ir_text)


@dataclass
class StateLayout:
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]
    offsets: list[int]
    nbytes: int

    def offset(self, name: str) -> int:
        return self.offsets[self.names.index(name)]

    def image(self, values: dict[str, np.ndarray]) -> np.ndarray:
        img = np.zeros(max(ALIGN, self.nbytes), dtype=np.uint8)
        for n, shape, dt, off in zip(self.names, self.shapes, self.dtypes, self.offsets):
            v = np.ascontiguousarray(np.asarray(values[n], dtype=dt).reshape(shape))
            img[off:off + v.nbytes] = v.view(np.uint8).reshape(-1)
        return img


def _state_layout(specs: list[tuple[str, tuple[int, ...], np.dtype]]) -> StateLayout:
    """(name, shape, dtype) laid out in order, each at a 64-byte aligned offset."""
    offsets, pos = [], 0
    for _, shape, dt in specs:
        offsets.append(pos)
        pos = align_up(pos + int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize)
    return StateLayout([n for n, _, _ in specs], [tuple(s) for _, s, _ in specs], [np.dtype(d) for _, _, d in specs],
                       offsets, pos)


def _specs(graph, names: list[str]) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    return [(n, tuple(graph.tensor(n).shape), np.dtype(graph.tensor(n).dtype)) for n in names]


@dataclass
class _SplitAbi:
    """Where the two-call step's modules find their inputs (state offsets) and keep their own state."""
    grad_table: list[int | None]     # blob offsets of the gradient module's constants
    apply_table: list[int | None]    # and of the update module's
    grad_inputs: list[int]           # state offsets of the gradient module's inputs after x and the labels
    apply_inputs: list[int]          # state offsets of every input of the update module
    apply_outputs: int               # how many (1,) float outputs the update module writes
    loss: int                        # state offset of the summed loss the update's finite check reads
    pending: int                     # state offset of an int64: 1 between compute and apply
    buffer: tuple[int, int]          # state offset and floats of the gradient buffer
    saved: list[tuple[int, int]]     # state offset and floats of each saved batch statistic
    param_offsets: list[int]         # per public state entry: float offset of its gradient, or -1


def _state_at(w: Wrapper, b: ir.IRBuilder, ctx: ir.Value, offset) -> ir.Value:
    """The address of the training state of ``ctx`` at byte ``offset``."""
    state = b.load(w.slot(b, ctx, Slot.STATE), typ=PTR)
    return b.gep(state, [offset if isinstance(offset, ir.Value) else i64(offset)], inbounds=True, source_etype=I8)


def _input_table(w: Wrapper, b: ir.IRBuilder, ctx: ir.Value, first: list[ir.Value], offsets: list[int]) -> ir.Value:
    """The inputs of a planned step: ``first``, then the state tensors at ``offsets``."""
    table = w.pointers(b, len(first) + len(offsets), "inputs")
    values = first + [_state_at(w, b, ctx, off) for off in offsets]
    for k, v in enumerate(values):
        b.store(v, gep(b, table, k, PTR))
    return table


@dataclass
class _TrainingAbi:
    """What the training library's C functions need to know of its state and blob."""
    layout: StateLayout
    arena_bytes: int
    train_table: list[int | None]  # blob offsets of the training module's constants
    image_offset: int              # blob offset of the initial state
    train_inputs: list[int]        # state offsets of the training step's inputs after x and the labels
    eval_inputs: list[int]         # state offsets of the eval forward's inputs after x
    lr: int
    step: int
    labels: tuple[int, str]        # elements, dtype
    loss: str
    optimizer: str
    split: _SplitAbi
    public: int                    # the state entries convc_state lists (the rest is the split step's)

    def __call__(self, w: Wrapper, meta: dict, offsets: Sequence[int | None]) -> None:
        """The C ABI; ``offsets`` are the blob offsets of the eval module's constants."""
        table = w.pointer_table("convc_constant_table_data", offsets)
        train_table = w.pointer_table("convc_train_table_data", self.train_table)
        w.metadata(meta, len(offsets), table)
        check = w.cpu_check()
        w.destroy()
        w.create(check, self.arena_bytes, table, 1, state=(self.layout.nbytes, self.image_offset))
        lay = self.layout
        w.spec_table(abi.STATE, [(n, d.name, s) for n, d, s in
                                 list(zip(lay.names, lay.dtypes, lay.shapes))[:self.public]])
        w.getter(abi.LABELS_SIZE, I64, self.labels[0])
        w.getter(abi.LABELS_DTYPE, PTR, w.string(self.labels[1]))
        w.getter(abi.LOSS_NAME, PTR, w.string(self.loss))
        w.getter(abi.OPTIMIZER_NAME, PTR, w.string(self.optimizer))
        self._train_step(w, train_table)
        self._run_model(w, table)
        self._state_functions(w)
        self._gradient_functions(w, w.pointer_table("convc_grad_table_data", self.split.grad_table),
                                 w.pointer_table("convc_apply_table_data", self.split.apply_table))

    def _train_step(self, w: Wrapper, table: ir.GlobalVariable) -> None:
        """convc_train_step(ctx, x, labels, loss): 0; 2 when the step changed nothing (a non-finite
        loss or gradient); 1 for a NULL argument."""
        run = w.extern(TRAIN_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.TRAIN_STEP, I32, [PTR, PTR, PTR, PTR])
        ctx, x, labels, loss = fn.args
        w.guard(fn, b, [ctx, x, labels], 1)
        inputs = _input_table(w, b, ctx, [x, labels], self.train_inputs)
        value = alloca_entry(b, F32, "loss")
        outputs = w.pointers(b, 1, "outputs")
        b.store(value, gep(b, outputs, 0, PTR))
        block = w.entry_context(b, ctx, table)
        counter = _state_at(w, b, ctx, self.step)
        # the step counter advances only when the update was applied
        before = b.load_atomic(counter, "monotonic", 8, typ=I64)
        b.call(run, [block, inputs, outputs])
        after = b.load_atomic(counter, "monotonic", 8, typ=I64)
        result = b.load(value, typ=F32)
        with b.if_then(b.icmp_unsigned("!=", loss, ir.Constant(PTR, None))):
            b.store(result, loss)
        b.ret(b.select(b.icmp_signed("==", before, after), ir.Constant(I32, 2), ir.Constant(I32, 0)))

    def _run_model(self, w: Wrapper, table: ir.GlobalVariable) -> None:
        """convc_run_model(ctx, inputs, outputs): the eval forward on the context's state."""
        run = w.extern(ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.RUN_MODEL, I32, [PTR, PTR, PTR])
        ctx, inputs, outputs = fn.args
        w.guard(fn, b, fn.args, 1)
        table_in = _input_table(w, b, ctx, [b.load(inputs, typ=PTR)], self.eval_inputs)
        b.call(run, [w.entry_context(b, ctx, table), table_in, outputs])
        b.ret(ir.Constant(I32, 0))

    def _state_functions(self, w: Wrapper) -> None:
        fn, b = w.function(abi.SET_LEARNING_RATE, VOID, [PTR, F32])
        w.guard(fn, b, [fn.args[0]], None)
        b.store(fn.args[1], _state_at(w, b, fn.args[0], self.lr))
        b.ret_void()
        for name, ty, offset, missing in ((abi.LEARNING_RATE, F32, self.lr, float("nan")),
                                          (abi.STEPS_DONE, I64, self.step, -1)):
            fn, b = w.function(name, ty, [PTR])
            w.guard(fn, b, [fn.args[0]], missing)
            b.ret(b.load(_state_at(w, b, fn.args[0], offset), typ=ty))
        # convc_state_data(ctx, i): NULL for a NULL context or i out of range
        n = self.public
        offsets = w.array(I64, self.layout.offsets[:n])
        fn, b = w.function(abi.STATE_DATA, PTR, [PTR, I32])
        ctx, i = fn.args
        w.guard(fn, b, [ctx], ir.Constant(PTR, None))
        inside, outside = fn.append_basic_block("in"), fn.append_basic_block("out")
        b.cbranch(b.icmp_unsigned("<", i, ir.Constant(I32, n)), inside, outside)
        b.position_at_end(inside)
        at = b.gep(offsets, [i64(0), b.zext(i, I64)], inbounds=True, source_etype=offsets.value_type)
        b.ret(_state_at(w, b, ctx, b.load(at, typ=I64)))
        b.position_at_end(outside)
        b.ret(ir.Constant(PTR, None))

    def _gradient_functions(self, w: Wrapper, grad_table: ir.GlobalVariable, apply_table: ir.GlobalVariable) -> None:
        sp = self.split
        # convc_compute_gradients(ctx, x, labels, loss, accumulate): 0; 1 for a NULL argument
        run = w.extern(GRAD_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.COMPUTE_GRADIENTS, I32, [PTR, PTR, PTR, PTR, I32])
        ctx, x, labels, loss, accumulate = fn.args
        w.guard(fn, b, [ctx, x, labels], 1)
        pending = _state_at(w, b, ctx, sp.pending)
        total = _state_at(w, b, ctx, sp.loss)
        fresh = b.or_(b.icmp_signed("==", accumulate, ir.Constant(I32, 0)),
                      b.icmp_signed("==", b.load(pending, typ=I64), i64(0)))
        with b.if_then(fresh):  # a new sum: the buffer and the loss start at 0
            _zero(b, _state_at(w, b, ctx, sp.buffer[0]), sp.buffer[1])
            b.store(f32(0.0), total)
        for off, size in sp.saved:  # the batch statistics are the last batch's
            _zero(b, _state_at(w, b, ctx, off), size)
        inputs = _input_table(w, b, ctx, [x, labels], sp.grad_inputs)
        value = alloca_entry(b, F32, "loss")
        outputs = w.pointers(b, 1, "outputs")
        b.store(value, gep(b, outputs, 0, PTR))
        b.call(run, [w.entry_context(b, ctx, grad_table), inputs, outputs])
        result = b.load(value, typ=F32)
        b.store(b.fadd(b.load(total, typ=F32), result), total)
        b.store(i64(1), pending)
        with b.if_then(b.icmp_unsigned("!=", loss, ir.Constant(PTR, None))):
            b.store(result, loss)
        b.ret(ir.Constant(I32, 0))

        # convc_apply_gradients(ctx): 0; 2 when nothing was applied; 1 for NULL
        run = w.extern(APPLY_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.APPLY_GRADIENTS, I32, [PTR])
        ctx = fn.args[0]
        w.guard(fn, b, [ctx], 1)
        pending = _state_at(w, b, ctx, sp.pending)
        with b.if_then(b.icmp_signed("==", b.load(pending, typ=I64), i64(0))):
            b.ret(ir.Constant(I32, 2))
        b.store(i64(0), pending)
        inputs = _input_table(w, b, ctx, [], sp.apply_inputs)
        outputs = w.pointers(b, sp.apply_outputs, "outputs")
        for k in range(sp.apply_outputs):  # ok and, with clipping, the gradient norm
            b.store(alloca_entry(b, F32, f"out{k}"), gep(b, outputs, k, PTR))
        counter = _state_at(w, b, ctx, self.step)
        before = b.load(counter, typ=I64)
        b.call(run, [w.entry_context(b, ctx, apply_table), inputs, outputs])
        after = b.load(counter, typ=I64)
        b.ret(b.select(b.icmp_signed("==", before, after), ir.Constant(I32, 2), ir.Constant(I32, 0)))

        fn, b = w.function(abi.GRADIENTS, PTR, [PTR])
        w.guard(fn, b, [fn.args[0]], ir.Constant(PTR, None))
        b.ret(_state_at(w, b, fn.args[0], sp.buffer[0]))
        w.getter(abi.GRADIENTS_SIZE, I64, sp.buffer[1])
        w.indexed(abi.GRADIENT_OFFSET, I64, sp.param_offsets, -1)


def _zero(b: ir.IRBuilder, ptr: ir.Value, floats: int) -> None:
    with for_range(b, floats, name="zero") as i:
        b.store(f32(0.0), gep(b, ptr, i))


def build_training_plan(step, eval_plan, opt, output: str | os.PathLike, options: CompileOptions, *,
                        name: str, loss: str, seed: int = 0, progress: Callable[[str], None] | None = None,
                        header: str | os.PathLike | None = None, split=None) -> BuildResult:
    """Build a training library from a planned training step (passes/autodiff/training.py's
    TrainingStep), the eval-mode forward's plan on the training state, the same step split in two
    around the gradient buffer (``SplitStep``) and the optimizer ``opt``, for ``options.target``
    (see the module docstring); ``name`` is the model's. The driver loads and plans the model."""
    tgt = resolve_target(options.target)
    if progress:
        progress("code generation (training step)")
    train_native = emit_module(step.plan, name + "_train", threads=1, target=tgt.llvm_target(), progress=progress)
    if progress:
        progress("code generation (eval forward)")
    eval_native = emit_module(eval_plan, name, threads=1, target=tgt.llvm_target(), progress=progress)
    if progress:
        progress("code generation (gradients, update)")
    grad_native = emit_module(split.compute, name + "_grad", threads=1, target=tgt.llvm_target(), progress=progress)
    apply_native = emit_module(split.apply, name + "_apply", threads=1, target=tgt.llvm_target(), progress=progress)

    tg = step.plan.graph
    # lr, step, parameters, running statistics, optimizer state
    state_names = [n for n in tg.inputs[2:] if n != step.rows]
    # then, past what convc_state lists: the loss's rows (always the whole batch here), the split
    # step's loss and pending flag, the gradient buffer (the parameters' gradients one after the
    # other) and the saved batch statistics
    ag, cg = split.apply.graph, split.compute.graph
    pending = "convc.gradients_pending"
    while pending in state_names or ag.has_tensor(pending):
        pending += "_"
    buffers = [split.buffers[p] for p in step.params]
    hidden = _specs(tg, [step.rows]) + _specs(ag, [step.loss]) + [(pending, (1,), np.dtype(np.int64))] + \
        _specs(cg, buffers + split.saved)
    layout = _state_layout(_specs(tg, state_names) + hidden)
    initial = dict(step.initial)
    initial[step.lr] = np.array([opt.lr], dtype=np.float32)
    for n, shape, dt in hidden:
        initial.setdefault(n, np.zeros(shape, dt))
    image = layout.image(initial)
    loss_t = tg.tensor(tg.outputs[0])
    if tg.outputs[0] != step.loss or loss_t.shape not in ((1,), ()) or loss_t.dtype != np.float32:
        raise CompileError(f"training step outputs {tg.outputs}: expected the float32 loss alone")
    eg = eval_plan.graph
    missing = [n for n in eg.inputs[1:] if n not in state_names]
    if missing:
        raise CompileError(f"the eval forward reads {missing}, which are not in the training state")

    # one blob: the eval module's constants, the training module's, then the initial state image
    eval_consts = used_constants(eval_native)
    train_consts = used_constants(train_native)
    grad_consts, apply_consts = used_constants(grad_native), used_constants(apply_native)
    everything = eval_consts + train_consts + grad_consts + apply_consts + [image]
    offsets, _ = blob_layout(everything)
    n_eval, n_train, n_grad = len(eval_consts), len(train_consts), len(grad_consts)
    train_table = offsets[n_eval:n_eval + n_train]
    grad_table = offsets[n_eval + n_train:n_eval + n_train + n_grad]
    apply_table = offsets[n_eval + n_train + n_grad:-1]
    image_offset = offsets[-1]
    start = layout.offset(buffers[0]) if buffers else layout.nbytes
    end = layout.offset(buffers[-1]) + 4 * int(np.prod(cg.tensor(buffers[-1]).shape)) if buffers else start
    gradient_at = {p: (layout.offset(split.buffers[p]) - start) // 4 for p in step.params}
    split_abi = _SplitAbi(
        grad_table, apply_table, [layout.offset(n) for n in cg.inputs[2:]], [layout.offset(n) for n in ag.inputs],
        len(ag.outputs), layout.offset(step.loss), layout.offset(pending), (start, (end - start) // 4),
        [(layout.offset(n), int(np.prod(cg.tensor(n).shape))) for n in split.saved],
        [gradient_at.get(n, -1) for n in state_names])

    # the library's "model": the eval forward (its inputs/outputs and metadata), the training step in addition
    specs = [[IOSpec(n, eg.tensor(n).shape, eg.tensor(n).dtype) for n in names]
             for names in ([eg.inputs[0]], list(eg.outputs))]
    labels_t = tg.tensor(step.labels)
    training_meta = {
        "loss": loss, "optimizer": type(opt).__name__, "lr": float(opt.lr), "seed": int(seed),
        "labels": {"name": step.labels, "shape": list(labels_t.shape), "dtype": np.dtype(labels_t.dtype).name},
        "params": list(step.params), "running": list(step.running), "step": step.step, "lr_name": step.lr,
        "state": [{"name": n, "shape": list(s), "dtype": d.name} for n, s, d in
                  list(zip(layout.names, layout.shapes, layout.dtypes))[:len(state_names)]],
        "gradients": {p: [gradient_at[p], int(np.prod(tg.tensor(p).shape))] for p in step.params},
        "optimizer_state": {p: list(v) for p, v in step.state.items()},
    }

    # the library's module: the eval forward's, the training module linked in, one arena for both
    arena = max(m.arena_bytes for m in (eval_native, train_native, grad_native, apply_native))
    native = dataclasses.replace(eval_native, arena_bytes=arena, threads=1)
    runtime = _TrainingAbi(
        layout, native.arena_bytes, train_table, image_offset, [layout.offset(n) for n in tg.inputs[2:]],
        [layout.offset(n) for n in eg.inputs[1:]], layout.offset(step.lr), layout.offset(step.step),
        (int(np.prod(labels_t.shape, dtype=np.int64)), np.dtype(labels_t.dtype).name), loss, type(opt).__name__,
        split_abi, len(state_names))
    train_ir = _rename_entry(str(train_native.ir_module))
    grad_ir = _rename_entry(str(grad_native.ir_module), GRAD_MODULE_PREFIX)
    apply_ir = _rename_entry(str(apply_native.ir_module), APPLY_MODULE_PREFIX)
    extra = {"training": training_meta}
    # the same code split as the JIT splits it: a kernel the four entry points share is compiled once
    parts = merge_splits([split_native(eval_native)] + [
        split_native(n, lambda text, prefix=prefix: _rename_entry(text, prefix)) for n, prefix in
        ((train_native, TRAIN_MODULE_PREFIX), (grad_native, GRAD_MODULE_PREFIX), (apply_native, APPLY_MODULE_PREFIX))])
    return build_native(native, output, tgt, *specs, graph_metadata=eg.metadata, progress=progress,
                        extra_meta=extra, header=header, constants=everything, runtime=runtime,
                        modules=(train_ir, grad_ir, apply_ir), speed=SPEED, extra_decls=TRAINING_DECLS,
                        parts=parts, cache_root=kernel_cache_root(options))
