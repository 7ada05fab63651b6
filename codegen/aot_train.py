"""Training artifacts: ``convc compile MODEL.onnx -o train.so --train --optimizer adam``.

The library holds two modules built by the training code generator (codegen/training.py): the
training step planned by passes/autodiff (forward in training mode, loss, backward, optimizer
update, in one function) and the eval-mode forward on the training state (the plan
``convc.Trainer.predict`` runs). Its context owns, besides the arena, the whole training state
(learning rate, step counter, parameters, BN running statistics, optimizer moments), laid out at
64-byte aligned offsets and initialized from an image embedded with the weights; the C ABI adds

    int   convc_train_step(convc_ctx *, const float *x, const void *labels, float *loss)
    void  convc_set_learning_rate(convc_ctx *, float) / float convc_learning_rate(convc_ctx *)
    int64_t convc_steps_done(convc_ctx *)
    convc_num_state / convc_state_name / _dtype / _rank / _shape / _size(i), void *convc_state_data(convc_ctx *, i)

and ``convc_run_model`` runs the eval-mode forward on the context's current weights. The step is
the Trainer's: a step with a non-finite loss or gradient changes nothing and returns 2. Training
runs on the calling thread (the training kernels are generated for one thread, as in the Trainer).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from convc.codegen.aot import (ALIGN, AotTarget, BuildResult, _IrText, align_up, blob_layout,
                               resolve_target, used_constants)
from convc.abi import MODULE_FUNCTIONS, TRAIN_MODULE_PREFIX
from convc.errors import CompileError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad")
LOSSES = ("cross_entropy", "mse", "bce")


def make_optimizer(name: str, lr: float | None = None):
    from convc import optim
    table = {"sgd": lambda lr: optim.SGD(lr if lr is not None else 0.01),
             "momentum": lambda lr: optim.SGD(lr if lr is not None else 0.01, momentum=0.9),
             "adam": lambda lr: optim.Adam(lr if lr is not None else 1e-3),
             "adamw": lambda lr: optim.AdamW(lr if lr is not None else 1e-3),
             "rmsprop": lambda lr: optim.RMSprop(lr if lr is not None else 0.01),
             "adagrad": lambda lr: optim.Adagrad(lr if lr is not None else 0.01)}
    if name not in table:
        raise CompileError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return table[name](lr)


def _rename_entry(ir_text: str) -> str:
    """The training step's module: its entry and pool functions become convc_train_* (the eval
    module keeps the public names); kernels are internal, the linker renames clashes."""
    names = "|".join(MODULE_FUNCTIONS)
    return re.sub(rf'@"({names})"|@({names})\b', lambda m: f'@"{TRAIN_MODULE_PREFIX}{m.group(1) or m.group(2)}"',
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


def _state_layout(graph, names: list[str]) -> StateLayout:
    offsets, pos, shapes, dtypes = [], 0, [], []
    for n in names:
        t = graph.tensor(n)
        offsets.append(pos)
        shapes.append(tuple(t.shape))
        dtypes.append(np.dtype(t.dtype))
        pos = align_up(pos + t.nbytes)
    return StateLayout(list(names), shapes, dtypes, offsets, pos)


def _store_ptrs(lines: list[str], array: str, base: str, offsets: list[int], start: int, tag: str) -> None:
    for k, off in enumerate(offsets, start=start):
        lines.append(f"  %{tag}p{k} = getelementptr inbounds i8, ptr {base}, i64 {off}")
        lines.append(f"  %{tag}i{k} = getelementptr inbounds ptr, ptr {array}, i64 {k}")
        lines.append(f"  store ptr %{tag}p{k}, ptr %{tag}i{k}")


def _runtime(arena: int, state: StateLayout, image_offset: int, train_offsets: list[int], eval_offsets: list[int],
             lr_off: int, step_off: int) -> str:
    n_train = 2 + len(train_offsets)
    n_eval = 1 + len(eval_offsets)
    create = f"""
define ptr @convc_create(i32 %n) #0 {{
entry:
  %slot = alloca ptr
  %slot2 = alloca ptr
  %missing = call i32 @convc_check_cpu()
  %cpu_ok = icmp eq i32 %missing, 0
  br i1 %cpu_ok, label %alloc, label %fail
alloc:
  %ctx = call ptr @calloc(i64 5, i64 8)
  %got = icmp ne ptr %ctx, null
  br i1 %got, label %arena, label %fail
arena:
  %rc = call i32 @posix_memalign(ptr %slot, i64 64, i64 {max(ALIGN, align_up(arena))})
  %ok1 = icmp eq i32 %rc, 0
  br i1 %ok1, label %state, label %free_ctx
state:
  %a = load ptr, ptr %slot
  store ptr %a, ptr %ctx
  %c1 = getelementptr inbounds ptr, ptr %ctx, i64 1
  store ptr @convc_constant_table_data, ptr %c1
  %rc2 = call i32 @posix_memalign(ptr %slot2, i64 64, i64 {max(ALIGN, state.nbytes)})
  %ok2 = icmp eq i32 %rc2, 0
  br i1 %ok2, label %init, label %free_arena
init:
  %s = load ptr, ptr %slot2
  call void @llvm.memcpy.p0.p0.i64(ptr align 64 %s, ptr align 64 getelementptr (i8, ptr @convc_weights, i64 {image_offset}), i64 {max(ALIGN, state.nbytes)}, i1 false)
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  store ptr %s, ptr %c4
  ret ptr %ctx
free_arena:
  call void @free(ptr %a)
  br label %free_ctx
free_ctx:
  call void @free(ptr %ctx)
  br label %fail
fail:
  ret ptr null
}}
"""
    step = [f"""
declare void @convc_train_convc_run(ptr, ptr, ptr)

define i32 @convc_train_step(ptr %ctx, ptr %x, ptr %labels, ptr %loss) #0 {{
entry:
  %in = alloca [{n_train} x ptr], align 8
  %out = alloca [1 x ptr], align 8
  %lossv = alloca float, align 4
  %c = alloca [4 x ptr], align 8
  %b0 = icmp eq ptr %ctx, null
  %b1 = icmp eq ptr %x, null
  %b2 = icmp eq ptr %labels, null
  %b01 = or i1 %b0, %b1
  %bad = or i1 %b01, %b2
  br i1 %bad, label %fail, label %go
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  store ptr %x, ptr %in
  %in1 = getelementptr inbounds ptr, ptr %in, i64 1
  store ptr %labels, ptr %in1"""]
    _store_ptrs(step, "%in", "%s", train_offsets, 2, "t")
    step.append(f"""  store ptr %lossv, ptr %out
  %arena = load ptr, ptr %ctx
  store ptr %arena, ptr %c
  %cc1 = getelementptr inbounds ptr, ptr %c, i64 1
  store ptr @convc_train_table_data, ptr %cc1
  %cc2 = getelementptr inbounds ptr, ptr %c, i64 2
  store ptr null, ptr %cc2
  %cc3 = getelementptr inbounds ptr, ptr %c, i64 3
  store ptr null, ptr %cc3
  %stepp = getelementptr inbounds i8, ptr %s, i64 {step_off}
  %before = load volatile i64, ptr %stepp
  call void @convc_train_convc_run(ptr %c, ptr %in, ptr %out)
  %after = load volatile i64, ptr %stepp
  %lv = load float, ptr %lossv
  %hasloss = icmp ne ptr %loss, null
  br i1 %hasloss, label %give, label %rc
give:
  store float %lv, ptr %loss
  br label %rc
rc:
  %same = icmp eq i64 %before, %after
  %r = select i1 %same, i32 2, i32 0
  ret i32 %r
fail:
  ret i32 1
}}
""")
    run = [f"""
define i32 @convc_run_model(ptr %ctx, ptr %inputs, ptr %outputs) #0 {{
entry:
  %in = alloca [{n_eval} x ptr], align 8
  %c = alloca [4 x ptr], align 8
  %b0 = icmp eq ptr %ctx, null
  %b1 = icmp eq ptr %inputs, null
  %b2 = icmp eq ptr %outputs, null
  %b01 = or i1 %b0, %b1
  %bad = or i1 %b01, %b2
  br i1 %bad, label %fail, label %go
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  %x = load ptr, ptr %inputs
  store ptr %x, ptr %in"""]
    _store_ptrs(run, "%in", "%s", eval_offsets, 1, "e")
    run.append("""  %arena = load ptr, ptr %ctx
  store ptr %arena, ptr %c
  %cc1 = getelementptr inbounds ptr, ptr %c, i64 1
  store ptr @convc_constant_table_data, ptr %cc1
  %cc2 = getelementptr inbounds ptr, ptr %c, i64 2
  store ptr null, ptr %cc2
  %cc3 = getelementptr inbounds ptr, ptr %c, i64 3
  store ptr null, ptr %cc3
  call void @convc_run(ptr %c, ptr %in, ptr %outputs)
  ret i32 0
fail:
  ret i32 1
}
""")
    misc = f"""
define void @convc_set_learning_rate(ptr %ctx, float %lr) #0 {{
entry:
  %null = icmp eq ptr %ctx, null
  br i1 %null, label %done, label %go
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  %p = getelementptr inbounds i8, ptr %s, i64 {lr_off}
  store float %lr, ptr %p
  br label %done
done:
  ret void
}}

define float @convc_learning_rate(ptr %ctx) #0 {{
entry:
  %null = icmp eq ptr %ctx, null
  br i1 %null, label %none, label %go
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  %p = getelementptr inbounds i8, ptr %s, i64 {lr_off}
  %v = load float, ptr %p
  ret float %v
none:
  ret float 0x7FF8000000000000
}}

define i64 @convc_steps_done(ptr %ctx) #0 {{
entry:
  %null = icmp eq ptr %ctx, null
  br i1 %null, label %none, label %go
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  %p = getelementptr inbounds i8, ptr %s, i64 {step_off}
  %v = load i64, ptr %p
  ret i64 %v
none:
  ret i64 -1
}}

define ptr @convc_state_data(ptr %ctx, i32 %i) #0 {{
entry:
  %null = icmp eq ptr %ctx, null
  %ok = icmp ult i32 %i, {len(state.names)}
  %nn = xor i1 %null, true
  %good = and i1 %nn, %ok
  br i1 %good, label %go, label %none
go:
  %c4 = getelementptr inbounds ptr, ptr %ctx, i64 4
  %s = load ptr, ptr %c4
  %k = zext i32 %i to i64
  %po = getelementptr inbounds [{len(state.names)} x i64], ptr @.convc.state.offsets, i64 0, i64 %k
  %off = load i64, ptr %po
  %p = getelementptr inbounds i8, ptr %s, i64 %off
  ret ptr %p
none:
  ret ptr null
}}
"""
    return create + "\n".join(step) + "\n".join(run) + misc


TRAIN_DECLS = """/* --- training (this library was built with --train) ---
 *
 * A context owns a training state (weights, BN running statistics, optimizer moments, the step
 * counter and the learning rate), initialized from the compiled model's weights. Training runs on
 * the calling thread. convc_run_model runs the model in eval mode (running statistics, no dropout)
 * on the context's current weights. */

/* One step on a batch: x has convc_input_size(0) floats, labels convc_labels_size() elements of
 * convc_labels_dtype() ("int64" class indices for cross-entropy, else "float32" targets shaped like
 * the output). *loss (if not NULL) receives the loss before the update. Returns 0; 2 when the loss
 * or a gradient was not finite (nothing was updated); 1 when an argument is NULL. */
int convc_train_step(convc_ctx *ctx, const float *x, const void *labels, float *loss);
void convc_set_learning_rate(convc_ctx *ctx, float lr);
float convc_learning_rate(convc_ctx *ctx);
int64_t convc_steps_done(convc_ctx *ctx);
int64_t convc_labels_size(void);
const char *convc_labels_dtype(void);
const char *convc_loss_name(void);
const char *convc_optimizer_name(void);

/* The training state, read/write (copy weights out after training, or load saved ones):
 * convc_state_data(ctx, i) points to convc_state_size(i) elements of convc_state_dtype(i). */
int convc_num_state(void);
const char *convc_state_name(int i);
const char *convc_state_dtype(int i);
int convc_state_rank(int i);
const int64_t *convc_state_shape(int i);
int64_t convc_state_size(int i);
void *convc_state_data(convc_ctx *ctx, int i);

"""


def build_training_library(model: Any, output: str | os.PathLike, *, batch: int | None = None,
                           optimizer: str | Any = "adam", lr: float | None = None, loss: str = "cross_entropy",
                           seed: int = 0, target: str | AotTarget = "native",
                           progress: Callable[[str], None] | None = None,
                           header: str | os.PathLike | None = None) -> BuildResult:
    """Build a training library for ``model`` at batch size ``batch`` (see the module docstring)."""
    from convc.codegen import kernels  # noqa: F401  (registers the emitters)
    from convc.codegen.aot import build_native
    from convc.codegen.training import OPT_LEVEL, TrainingEmitter
    from convc.compiler import load_graph
    from convc.passes.autodiff.training import build_training
    from convc.runtime import IOSpec
    from convc.train import _eval_plan, load_forward
    tgt = resolve_target(target)
    if loss not in LOSSES:
        raise CompileError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    opt = make_optimizer(optimizer, lr) if isinstance(optimizer, str) else optimizer
    if progress:
        progress("import")
    g0 = load_graph(model, batch)
    shape = g0.tensor(g0.inputs[0]).shape
    forward = load_forward(g0, shape)
    if progress:
        progress("training step: autodiff, loss, optimizer")
    step = build_training(forward, loss=loss, optimizer=opt, seed=seed)
    eval_plan = _eval_plan(forward, step.roles)
    if progress:
        progress("code generation (training step)")
    train_native = TrainingEmitter(step.plan, forward.name + "_train", False, 1, tgt.llvm_target(), progress).emit()
    if progress:
        progress("code generation (eval forward)")
    eval_native = TrainingEmitter(eval_plan, forward.name, False, 1, tgt.llvm_target(), progress).emit()

    tg = step.plan.graph
    state_names = list(tg.inputs[2:])  # lr, step, parameters, running statistics, optimizer state
    layout = _state_layout(tg, state_names)
    initial = dict(step.initial)
    initial[step.lr] = np.array([opt.lr], dtype=np.float32)
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
    everything = eval_consts + train_consts + [image]
    offsets, _ = blob_layout(everything)
    n_eval = len(eval_consts)
    train_table = offsets[n_eval:n_eval + len(train_consts)]
    image_offset = offsets[-1]

    # the library's "model": the eval forward (its inputs/outputs and metadata), the training step in addition
    specs = [[IOSpec(n, eg.tensor(n).shape, eg.tensor(n).dtype) for n in names]
             for names in ([eg.inputs[0]], list(eg.outputs))]
    labels_t = tg.tensor(step.labels)
    training_meta = {
        "loss": loss, "optimizer": type(opt).__name__, "lr": float(opt.lr), "seed": int(seed),
        "labels": {"name": step.labels, "shape": list(labels_t.shape), "dtype": np.dtype(labels_t.dtype).name},
        "params": list(step.params), "running": list(step.running), "step": step.step, "lr_name": step.lr,
        "state": [{"name": n, "shape": list(s), "dtype": d.name} for n, s, d in
                  zip(layout.names, layout.shapes, layout.dtypes)],
        "optimizer_state": {p: list(v) for p, v in step.state.items()},
    }

    class _Native:  # what build_native reads: the eval module plus the training module linked in
        ir_module = eval_native.ir_module
        name = eval_native.name
        arena_bytes = max(eval_native.arena_bytes, train_native.arena_bytes)
        constants = eval_native.constants
        used_constants = eval_native.used_constants
        kernel_names = eval_native.kernel_names
        threads = 1

    t = _IrText("convc.train")
    t.lines.append("@.convc.state.offsets = private unnamed_addr constant [%d x i64] [%s]"
                   % (len(layout.names), ", ".join(f"i64 {o}" for o in layout.offsets)))
    n_state = len(layout.names)
    t.getter("convc_num_state", "i32", str(n_state))
    t.indexed("convc_state_name", "ptr", t.array("ptr", [t.string(n) for n in layout.names]), n_state, "null")
    t.indexed("convc_state_dtype", "ptr", t.array("ptr", [t.string(d.name) for d in layout.dtypes]), n_state, "null")
    t.indexed("convc_state_rank", "i32", t.array("i32", [str(len(s)) for s in layout.shapes], 4), n_state, "-1")
    t.indexed("convc_state_shape", "ptr", t.array("ptr", [t.array("i64", [str(d) for d in s]) for s in layout.shapes]),
              n_state, "null")
    t.indexed("convc_state_size", "i64", t.array("i64", [str(int(np.prod(s, dtype=np.int64))) for s in layout.shapes]),
              n_state, "-1")
    t.getter("convc_labels_size", "i64", str(int(np.prod(labels_t.shape, dtype=np.int64))))
    t.getter("convc_labels_dtype", "ptr", t.string(np.dtype(labels_t.dtype).name))
    t.getter("convc_loss_name", "ptr", t.string(loss))
    t.getter("convc_optimizer_name", "ptr", t.string(type(opt).__name__))
    runtime = "\n".join(t.lines) + "\n" + _runtime(
        _Native.arena_bytes, layout, image_offset, [layout.offset(n) for n in tg.inputs[2:]],
        [layout.offset(n) for n in eg.inputs[1:]], layout.offset(step.lr), layout.offset(step.step))
    train_ir = _rename_entry(str(train_native.ir_module))
    extra = {"training": training_meta}
    return build_native(_Native, output, tgt, *specs, graph_metadata=eg.metadata, progress=progress,
                        extra_meta=extra, header=header, constants=everything, runtime=runtime,
                        tables={"convc_train_table_data": train_table}, modules=(train_ir,), speed=OPT_LEVEL,
                        extra_decls=TRAIN_DECLS)
