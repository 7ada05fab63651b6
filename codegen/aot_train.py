"""Training artifacts: ``convc compile MODEL.onnx -o train.so --train --optimizer adam``.

The library holds two modules emitted like any plan (codegen/module.py; both plans are training
variants of passes/pipeline.py, whose weights are read at run time): the training step built by
passes/autodiff (forward in training mode, loss, backward, optimizer update, in one function) and
the eval-mode forward on the training state (the plan ``convc.Trainer.predict`` runs). It is built
by the inference libraries' path (codegen/aot.py ``build_native``) with this module's C ABI. Its context owns, besides the arena, the whole training state
(learning rate, step counter, parameters, BN running statistics, optimizer moments), laid out at
64-byte aligned offsets and initialized from an image embedded with the weights; the C ABI adds

    int   convc_train_step_n(convc_ctx *, const float *const *inputs, const void *const *labels, int64_t n,
                             float *loss)   (n <= the compiled batch samples)
    int   convc_train_step_v(convc_ctx *, const float *const *inputs, const void *const *labels, float *loss)
    int   convc_train_step(convc_ctx *, const float *x, const void *labels, float *loss)   (one input, one output)
    convc_num_labels / convc_label_name / _dtype / _rank / _shape / _size(j), convc_label_loss(j), convc_loss_weight(j)
    void  convc_set_learning_rate(convc_ctx *, float) / float convc_learning_rate(convc_ctx *)
    int64_t convc_steps_done(convc_ctx *)
    convc_num_state / convc_state_name / _dtype / _rank / _shape / _size(i), void *convc_state_data(convc_ctx *, i)
    int   convc_compute_gradients_n(convc_ctx *, inputs, labels, int64_t n, float *loss, int accumulate),
          convc_compute_gradients_v(convc_ctx *, inputs, labels, float *loss, int accumulate) and
          convc_compute_gradients(convc_ctx *, const float *x, const void *labels, float *loss, int accumulate)
    int   convc_apply_gradients(convc_ctx *)
    float *convc_gradients(convc_ctx *); int64_t convc_gradients_size(void), convc_gradient_offset(i)

and ``convc_run_model`` runs the eval-mode forward on the context's current weights. Every model
input is the caller's, and each output has its targets and loss, summed with the loss weights as
``convc.Trainer`` sums them; the one-pointer forms return 3 for a model with more than one input
or output. Each planned module's input table mixes the caller's pointers and state tensors
(``Source``). The step is
the Trainer's: a step with a non-finite loss or gradient changes nothing and returns 2. A batch of
n samples below the compiled one runs as the Trainer runs it: copied into a zeroed block of the
compiled batch, with n as the rows the loss and BatchNorm's statistics count (the ``_n`` forms;
the others are them at the compiled batch). The two
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
from convc.codegen.header import training_decls
from convc.codegen.llvm_utils import (F32, I8, I32, I64, PTR, VOID, alloca_entry, f32, for_range, gep, i64, intrinsic,
                                     memcpy)
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
    grad_inputs: list[Source]        # where each input of the gradient module comes from
    apply_inputs: list[Source]       # and of the update module (all state)
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


# Where a planned module's input comes from: ("input", i) and ("label", i) are the caller's i-th
# model input and i-th target (one per output), ("state", offset) the context's training state.
Source = tuple[str, int]


def _sources(names: Sequence[str], inputs: Sequence[str], labels: Sequence[str], layout: "StateLayout") -> list[Source]:
    return [("input", inputs.index(n)) if n in inputs else ("label", labels.index(n)) if n in labels
            else ("state", layout.offset(n)) for n in names]


def _input_table(w: Wrapper, b: ir.IRBuilder, ctx: ir.Value, sources: Sequence[Source],
                 fed: dict[str, list[ir.Value]]) -> ir.Value:
    """The input table of a planned module: per ``sources`` entry, the caller's pointer from ``fed``
    ("input" and "label" lists) or the state tensor at its offset."""
    table = w.pointers(b, len(sources), "inputs")
    for k, (kind, at) in enumerate(sources):
        v = _state_at(w, b, ctx, at) if kind == "state" else fed[kind][at]
        b.store(v, gep(b, table, k, PTR))
    return table


def _load_pointers(b: ir.IRBuilder, array: ir.Value, n: int) -> list[ir.Value]:
    """``array[0..n)`` of a ``const void *const *`` argument."""
    return [b.load(gep(b, array, k, PTR), typ=PTR) for k in range(n)]


@dataclass
class _TrainingAbi:
    """What the training library's C functions need to know of its state and blob."""
    layout: StateLayout
    arena_bytes: int
    train_table: list[int | None]  # blob offsets of the training module's constants
    image_offset: int              # blob offset of the initial state
    train_inputs: list[Source]     # where each input of the training step comes from
    eval_inputs: list[Source]      # and of the eval forward
    lr: int
    step: int
    n_inputs: int                  # the model's inputs, fed by the caller
    labels: list[tuple[str, str, tuple[int, ...]]]  # per output: its targets' name, dtype, shape
    losses: list[str]              # per output: its loss
    weights: list[float]           # per output: its loss's weight in the sum
    optimizer: str
    split: _SplitAbi
    public: int                    # the state entries convc_state lists (the rest is the split step's)
    batch: int                     # the compiled batch: the most samples a step takes
    rows: int                      # state offset of the (1,) int64 count of samples the loss and BN use
    row_bytes: list[int]           # bytes per sample of every model input, then of every output's targets
    # per output: (classes, ignore_index or None) when its targets are class indices, else None
    class_labels: list[tuple[int, int | None] | None]

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
        # the first output's targets and loss (a model with one output); the tables cover every output
        w.getter(abi.LABELS_SIZE, I64, int(np.prod(self.labels[0][2], dtype=np.int64)))
        w.getter(abi.LABELS_DTYPE, PTR, w.string(self.labels[0][1]))
        w.getter(abi.LOSS_NAME, PTR, w.string(self.losses[0]))
        w.spec_table(abi.LABELS, self.labels)
        w.indexed(abi.LABEL_LOSS, PTR, [w.string(v) for v in self.losses], ir.Constant(PTR, None))
        w.indexed(abi.LOSS_WEIGHT, F32, self.weights, float("nan"), align=4)
        w.getter(abi.OPTIMIZER_NAME, PTR, w.string(self.optimizer))
        self._train_step(w, train_table)
        self._run_model(w, table)
        self._state_functions(w)
        self._gradient_functions(w, w.pointer_table("convc_grad_table_data", self.split.grad_table),
                                 w.pointer_table("convc_apply_table_data", self.split.apply_table))

    def _fed(self, w: Wrapper, fn: ir.Function, b: ir.IRBuilder, ctx: ir.Value, inputs: ir.Value,
             labels: ir.Value) -> dict[str, list[ir.Value]]:
        """The caller's input and target pointers from the arrays ``inputs`` and ``labels``; returns
        1 from ``fn`` when an array or a pointer in it is NULL."""
        w.guard(fn, b, [ctx, inputs, labels], 1)
        fed = {"input": _load_pointers(b, inputs, self.n_inputs), "label": _load_pointers(b, labels, len(self.labels))}
        w.guard(fn, b, fed["input"] + fed["label"], 1)
        return fed

    def _rows(self, w: Wrapper, b: ir.IRBuilder, ctx: ir.Value, fed: dict[str, list[ir.Value]],
              n: ir.Value) -> tuple[dict[str, list[ir.Value]], ir.Value]:
        """A batch of ``n`` samples on the step compiled for ``batch``: returns 4 from the function
        when n is not in [1, batch]; stores n as the rows the loss and BatchNorm count; for n <
        batch copies the caller's n samples of every input and target into one zeroed block of the
        compiled batch (returns 5 when calloc fails), as ``convc.Trainer`` pads a smaller batch
        with zeros (finite values whose gradients the loss masks). Returns the pointers the modules
        read and the block, NULL when n == batch, for ``_release``."""
        ok = b.and_(b.icmp_signed(">=", n, i64(1)), b.icmp_signed("<=", n, i64(self.batch)))
        with b.if_then(b.not_(ok), likely=False):
            b.ret(ir.Constant(I32, 4))
        self._check_class_labels(b, fed["label"], n)
        b.store(n, _state_at(w, b, ctx, self.rows))
        given = fed["input"] + fed["label"]
        cells = [alloca_entry(b, PTR, f"fed{k}") for k in range(len(given))]
        for cell, p in zip(cells, given):
            b.store(p, cell)
        block_cell = alloca_entry(b, PTR, "block")
        b.store(ir.Constant(PTR, None), block_cell)
        at, offsets = 0, []
        for size in self.row_bytes:
            offsets.append(at)
            at = align_up(at + size * self.batch)
        # an ignore_index that is a class is rewritten to -1 (what the loss kernel skips) in the copy
        remap = [(k, c[1]) for k, c in enumerate(self.class_labels) if c is not None and c[1] is not None
                 and 0 <= c[1] < c[0]]
        copy = b.icmp_signed("<", n, i64(self.batch)) if not remap else ir.Constant(ir.IntType(1), 1)
        with b.if_then(copy):
            calloc = intrinsic(b.module, "calloc", PTR, [I64, I64])
            block = b.call(calloc, [i64(max(at, ALIGN)), i64(1)])
            with b.if_then(b.icmp_unsigned("==", block, ir.Constant(PTR, None)), likely=False):
                b.ret(ir.Constant(I32, 5))
            b.store(block, block_cell)
            for cell, p, size, off in zip(cells, given, self.row_bytes, offsets):
                dst = b.gep(block, [i64(off)], inbounds=True, source_etype=I8)
                memcpy(b, dst, p, b.mul(n, i64(size)))
                b.store(dst, cell)
            for k, ignore in remap:
                labels = b.load(cells[self.n_inputs + k], typ=PTR)
                with for_range(b, n, name="remap") as i:
                    at = gep(b, labels, i, I64)
                    with b.if_then(b.icmp_signed("==", b.load(at, typ=I64), i64(ignore))):
                        b.store(i64(-1), at)
        loaded = [b.load(cell, typ=PTR) for cell in cells]
        k = self.n_inputs
        return {"input": loaded[:k], "label": loaded[k:]}, b.load(block_cell, typ=PTR)

    def _check_class_labels(self, b: ir.IRBuilder, labels: list[ir.Value], n: ir.Value) -> None:
        """Returns 6 from the function, before anything changes, when a class index among the n samples'
        targets is outside [0, classes) and is not the loss's ignore_index (or -1, with one) (the loss
        kernel would skip it as ignored: a wrong label would silently not train)."""
        for p, check in zip(labels, self.class_labels):
            if check is None:
                continue
            classes, ignore = check
            with for_range(b, n, name="label") as i:
                v = b.load(gep(b, p, i, I64), typ=I64)
                bad = b.icmp_unsigned(">=", v, i64(classes))  # a negative index wraps past it
                if ignore is not None:  # -1 too: what convc.load's trainer passes for an ignored sample
                    bad = b.and_(bad, b.and_(b.icmp_signed("!=", v, i64(ignore)), b.icmp_signed("!=", v, i64(-1))))
                with b.if_then(bad, likely=False):
                    b.ret(ir.Constant(I32, 6))

    @staticmethod
    def _release(b: ir.IRBuilder, block: ir.Value) -> None:
        """Frees ``_rows``' block (free(NULL) does nothing)."""
        b.call(intrinsic(b.module, "free", VOID, [PTR]), [block])

    def _full_batch_form(self, w: Wrapper, name: str, full: ir.Function, extra: Sequence[ir.Type]) -> ir.Function:
        """``name(ctx, inputs, labels, ...)``: ``full(ctx, inputs, labels, batch, ...)``, the
        compiled batch (the form from before run-time batches)."""
        fn, b = w.function(name, I32, [PTR, PTR, PTR, *extra])
        ctx, inputs, labels, *rest = fn.args
        b.ret(b.call(full, [ctx, inputs, labels, i64(self.batch), *rest]))
        return fn

    def _one_pointer_form(self, w: Wrapper, name: str, full: ir.Function, extra: Sequence[ir.Type]) -> None:
        """``name(ctx, x, labels, ...)``: ``full(ctx, &x, &labels, ...)`` for a model with one input
        and one output; 3 for a model with more, which needs the array form."""
        fn, b = w.function(name, I32, [PTR, PTR, PTR, *extra])
        ctx, x, labels, *rest = fn.args
        if self.n_inputs != 1 or len(self.labels) != 1:
            b.ret(ir.Constant(I32, 3))
            return
        arrays = []
        for k, v in enumerate((x, labels)):
            cell = alloca_entry(b, PTR, f"array{k}")
            b.store(v, cell)
            arrays.append(cell)
        b.ret(b.call(full, [ctx, *arrays, *rest]))

    def _train_step(self, w: Wrapper, table: ir.GlobalVariable) -> None:
        """convc_train_step_n(ctx, inputs, labels, n, loss): 0; 2 when the step changed nothing (a
        non-finite loss or gradient); 1 for a NULL argument; 4 for n outside [1, batch]; 5 when
        out of memory. convc_train_step_v(ctx, inputs, labels, loss) is it at the compiled batch,
        and convc_train_step(ctx, x, labels, loss) that for a model with one input and one output."""
        run = w.extern(TRAIN_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.TRAIN_STEP_N, I32, [PTR, PTR, PTR, I64, PTR])
        ctx, given, labels, n, loss = fn.args
        fed, block = self._rows(w, b, ctx, self._fed(w, fn, b, ctx, given, labels), n)
        inputs = _input_table(w, b, ctx, self.train_inputs, fed)
        value = alloca_entry(b, F32, "loss")
        outputs = w.pointers(b, 1, "outputs")
        b.store(value, gep(b, outputs, 0, PTR))
        context = w.entry_context(b, ctx, table)
        counter = _state_at(w, b, ctx, self.step)
        # the step counter advances only when the update was applied
        before = b.load_atomic(counter, "monotonic", 8, typ=I64)
        b.call(run, [context, inputs, outputs])
        self._release(b, block)
        after = b.load_atomic(counter, "monotonic", 8, typ=I64)
        result = b.load(value, typ=F32)
        with b.if_then(b.icmp_unsigned("!=", loss, ir.Constant(PTR, None))):
            b.store(result, loss)
        b.ret(b.select(b.icmp_signed("==", before, after), ir.Constant(I32, 2), ir.Constant(I32, 0)))
        full = self._full_batch_form(w, abi.TRAIN_STEP_V, fn, [PTR])
        self._one_pointer_form(w, abi.TRAIN_STEP, full, [PTR])

    def _run_model(self, w: Wrapper, table: ir.GlobalVariable) -> None:
        """convc_run_model(ctx, inputs, outputs): the eval forward on the context's state."""
        run = w.extern(ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.RUN_MODEL, I32, [PTR, PTR, PTR])
        ctx, inputs, outputs = fn.args
        w.guard(fn, b, fn.args, 1)
        table_in = _input_table(w, b, ctx, self.eval_inputs, {"input": _load_pointers(b, inputs, self.n_inputs)})
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
        # convc_compute_gradients_n(ctx, inputs, labels, n, loss, accumulate): 0; 1 for a NULL
        # argument, 4 and 5 as convc_train_step_n's; _v is it at the compiled batch
        run = w.extern(GRAD_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.COMPUTE_GRADIENTS_N, I32, [PTR, PTR, PTR, I64, PTR, I32])
        ctx, given, labels, n, loss, accumulate = fn.args
        fed, block = self._rows(w, b, ctx, self._fed(w, fn, b, ctx, given, labels), n)
        pending = _state_at(w, b, ctx, sp.pending)
        total = _state_at(w, b, ctx, sp.loss)
        fresh = b.or_(b.icmp_signed("==", accumulate, ir.Constant(I32, 0)),
                      b.icmp_signed("==", b.load(pending, typ=I64), i64(0)))
        with b.if_then(fresh):  # a new sum: the buffer and the loss start at 0
            _zero(b, _state_at(w, b, ctx, sp.buffer[0]), sp.buffer[1])
            b.store(f32(0.0), total)
        for off, size in sp.saved:  # the batch statistics are the last batch's
            _zero(b, _state_at(w, b, ctx, off), size)
        inputs = _input_table(w, b, ctx, sp.grad_inputs, fed)
        value = alloca_entry(b, F32, "loss")
        outputs = w.pointers(b, 1, "outputs")
        b.store(value, gep(b, outputs, 0, PTR))
        b.call(run, [w.entry_context(b, ctx, grad_table), inputs, outputs])
        self._release(b, block)
        result = b.load(value, typ=F32)
        b.store(b.fadd(b.load(total, typ=F32), result), total)
        b.store(i64(1), pending)
        with b.if_then(b.icmp_unsigned("!=", loss, ir.Constant(PTR, None))):
            b.store(result, loss)
        b.ret(ir.Constant(I32, 0))
        full = self._full_batch_form(w, abi.COMPUTE_GRADIENTS_V, fn, [PTR, I32])
        self._one_pointer_form(w, abi.COMPUTE_GRADIENTS, full, [PTR, I32])

        # convc_apply_gradients(ctx): 0; 2 when nothing was applied; 1 for NULL
        run = w.extern(APPLY_MODULE_PREFIX + ENTRY, VOID, [PTR, PTR, PTR])
        fn, b = w.function(abi.APPLY_GRADIENTS, I32, [PTR])
        ctx = fn.args[0]
        w.guard(fn, b, [ctx], 1)
        pending = _state_at(w, b, ctx, sp.pending)
        with b.if_then(b.icmp_signed("==", b.load(pending, typ=I64), i64(0))):
            b.ret(ir.Constant(I32, 2))
        b.store(i64(0), pending)
        inputs = _input_table(w, b, ctx, sp.apply_inputs, {})
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


def _row_bytes(graph, name: str) -> int:
    """Bytes per sample of ``name`` (batch first)."""
    t = graph.tensor(name)
    return int(np.prod(t.shape[1:], dtype=np.int64)) * np.dtype(t.dtype).itemsize


def _zero(b: ir.IRBuilder, ptr: ir.Value, floats: int) -> None:
    with for_range(b, floats, name="zero") as i:
        b.store(f32(0.0), gep(b, ptr, i))


def build_training_plan(step, eval_plan, opt, output: str | os.PathLike, options: CompileOptions, *,
                        name: str, loss: str | Sequence[str], seed: int = 0,
                        progress: Callable[[str], None] | None = None, header: str | os.PathLike | None = None,
                        split=None, loss_weights: Sequence[float] | None = None,
                        loss_settings: Sequence | None = None) -> BuildResult:
    """Build a training library from a planned training step (passes/autodiff/training.py's
    TrainingStep), the eval-mode forward's plan on the training state, the same step split in two
    around the gradient buffer (``SplitStep``) and the optimizer ``opt``, for ``options.target``
    (see the module docstring); ``name`` is the model's. ``loss``: one per model output (a name for
    a model with one), summed with ``loss_weights`` (default 1 each) as the step was built. The
    driver loads and plans the model. ``loss_settings``: per output, what the metadata records of
    its loss's options (``convc.Loss.settings()``: the name alone, or every field)."""
    losses = [loss] if isinstance(loss, str) else list(loss)
    weights = [1.0] * len(losses) if loss_weights is None else [float(v) for v in loss_weights]
    settings = list(loss_settings) if loss_settings is not None else list(losses)
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
    inputs, labels = list(step.model_inputs), list(step.all_labels)  # what the caller feeds
    if len(labels) != len(losses) or len(weights) != len(losses) or len(settings) != len(losses):
        raise CompileError(f"{len(labels)} outputs: {len(losses)} losses, {len(weights)} weights and "
                           f"{len(settings)} loss settings given")
    # lr, step, parameters, running statistics, optimizer state
    state_names = [n for n in tg.inputs if n not in inputs and n not in labels and n != step.rows]
    # then, past what convc_state lists: the loss's rows (the batch each call is given), the split
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
    if list(eg.inputs[:len(inputs)]) != inputs:
        raise CompileError(f"the eval forward's inputs {eg.inputs[:len(inputs)]} are not the model's {inputs}")
    missing = [n for n in eg.inputs[len(inputs):] if n not in state_names]
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
        grad_table, apply_table, _sources(cg.inputs, inputs, labels, layout), _sources(ag.inputs, [], [], layout),
        len(ag.outputs), layout.offset(step.loss), layout.offset(pending), (start, (end - start) // 4),
        [(layout.offset(n), int(np.prod(cg.tensor(n).shape))) for n in split.saved],
        [gradient_at.get(n, -1) for n in state_names])

    # the library's "model": the eval forward (its inputs/outputs and metadata), the training step in addition
    specs = [[IOSpec(n, eg.tensor(n).shape, eg.tensor(n).dtype) for n in names]
             for names in (inputs, list(eg.outputs))]
    targets = [(n, np.dtype(tg.tensor(n).dtype).name, tuple(tg.tensor(n).shape)) for n in labels]
    # per output: its targets, loss and weight; "labels" and "loss" are the first's (one output)
    training_meta = {
        "loss": losses[0], "optimizer": type(opt).__name__, "lr": float(opt.lr), "seed": int(seed),
        "labels": {"name": labels[0], "shape": list(targets[0][2]), "dtype": targets[0][1]},
        "targets": [{"name": n, "shape": list(shape), "dtype": dt, "output": out, "loss": v, "weight": wt,
                     "settings": st}
                    for (n, dt, shape), out, v, wt, st in zip(targets, eg.outputs, losses, weights, settings)],
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
        layout, native.arena_bytes, train_table, image_offset, _sources(tg.inputs, inputs, labels, layout),
        _sources(eg.inputs, inputs, [], layout), layout.offset(step.lr), layout.offset(step.step), len(inputs),
        targets, losses, weights, type(opt).__name__, split_abi, len(state_names), int(tg.tensor(inputs[0]).shape[0]),
        layout.offset(step.rows), [_row_bytes(tg, n) for n in inputs + labels],
        [(int(eg.tensor(out).shape[1]), st.get("ignore_index") if isinstance(st, dict) else None)
         if np.dtype(dt).kind in "iu" else None
         for (_, dt, _), out, st in zip(targets, eg.outputs, settings)])
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
                        modules=(train_ir, grad_ir, apply_ir), speed=SPEED,
                        extra_decls=training_decls(targets, runtime.batch),
                        parts=parts, cache_root=kernel_cache_root(options))
