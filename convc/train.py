"""Training compiled ahead of time: ``convc.Trainer`` and ``convc.gradcheck``.

    trainer = convc.Trainer("model.onnx", input_shape=(64, 1, 8, 8), loss="cross_entropy",
                            optimizer=convc.optim.Adam(1e-3), seed=0)
    for x, y in batches:
        loss = trainer.step(x, y)          # one native call: forward, loss, backward, update
    trainer.lr = 1e-4                      # or a schedule: convc.optim.CosineAnnealingLR(trainer, T_max=...)
    trainer.save("ckpt.npz")               # everything; convc.Trainer.load("ckpt.npz", model) resumes bit-exactly
    probs = trainer.predict(x_test)        # eval mode: BN running statistics, no dropout
    trainer.export_onnx("trained.onnx")    # runs in onnxruntime with the trained weights

The training step is built by passes/autodiff/training.py and planned by the pipeline's training
variant (passes/pipeline.py); the driver compiles it, and the eval-mode forward ``predict`` runs, as
it compiles any model (the compile cache, a CompiledModel on the NativeRunner). The Trainer owns
the persistent training state (parameters, BN running statistics, optimizer state, the step
counter) as numpy arrays bound to the compiled models' inputs, which the native code updates in place.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convc import checkpoint, train_inputs
from convc.checkpoint import CheckpointError
from convc.driver import compile_bound
from convc.driver import eval_plan as _eval_plan
from convc.errors import ConvcError, InputError
from convc.ir import Graph
from convc.limits import check_size, positive_int
from convc.losses import Loss
from convc.optim import SGD, Optimizer
from convc.model import CompiledModel
from convc.options import resolve_options
from convc.passes.autodiff.training import SplitStep, TrainingStep, build_split, build_training
from convc.runtime import dtype_error

from convc.gradient_check import GradcheckResult, gradcheck  # noqa: F401  (convc.train's API since before)

__all__ = ["CheckpointError", "GradcheckResult", "StepOutputs", "Trainer", "TrainingError", "gradcheck"]


class TrainingError(ConvcError):
    """A training step could not be applied (non-finite loss or gradients); the state is unchanged."""


@dataclass(frozen=True)
class StepOutputs:
    """What ``step(..., return_outputs=True)`` returns besides the loss."""
    loss: float
    outputs: Any              # the model's output on the batch (training mode) as the loss read it: the
                              # logits when a final Softmax (LogSoftmax for nll) was folded into the loss;
                              # a list of them, one per output, for a model with several outputs
    accuracy: float | None    # class indices: the fraction of counted samples whose argmax is the label




# --- the Trainer ---------------------------------------------------------------------------------------
class Trainer:
    """Compiles a model's training step to one native function and keeps its training state.

    ``model``: an ONNX model (path, bytes or ModelProto), a convc Graph, or a ``convc.nn`` module.
    ``input_shape``: the batch shape, batch first (``step`` compiles other batch sizes on first use);
    a model with several inputs takes one shape per input, a dict ``{name: shape}`` or a list in
    the model's input order, and ``x`` is then a list (that order) or a dict of arrays, in ``step``,
    ``compute_gradients``, ``predict`` and ``evaluate`` (their batch sizes must agree).
    ``loss``: a name or ``convc.Loss`` (convc/losses.py: cross_entropy, nll, mse, l1, huber,
    smooth_l1, bce, bce_with_logits, with label smoothing, class weights, ignore_index, soft targets).
    A batch smaller than the compiled one trains on the compiled step, padded, with the loss and
    BatchNorm's batch statistics counting only its samples (the small batch's result, no compile).
    ``optimizer``: from ``convc.optim`` (default SGD(0.01)). ``l1``/``l2``: regularization of the
    weights of Conv/Gemm/MatMul (not biases or BN parameters unless ``regularize_all``).
    ``seed``: seeds Dropout's counter-based generator (a run is reproducible). ``threads``: worker
    threads of the native step (default: every core); results do not depend on it.
    ``clip_grad_norm``: clip the gradients to this global L2 norm in the step (PyTorch's
    ``clip_grad_norm_``); ``trainer.clip_grad_norm`` changes it at run time, ``last_grad_norm``
    is the norm of the last step. ``save``/``load_state``/``Trainer.load``: checkpoints.
    ``freeze_bn``: BatchNorm normalizes with its running statistics and leaves them as they are
    (fine-tuning; its scale and shift still train, PyTorch's ``bn.eval()``).
    ``step(x, y, return_outputs=True)`` returns ``StepOutputs`` (loss, the model's outputs, accuracy).
    A model with several outputs takes a list of losses, one per output (``loss_weights``: the
    weights of their sum, default 1), and ``y`` is then a list of targets, one per output.
    ``compute_gradients``/``gradients``/``apply_gradients``: the step in two calls around one
    gradient buffer (data-parallel training, accumulation over micro-batches)."""

    def __init__(self, model: Any, *, input_shape: Sequence[int] | Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
                 loss: str | Loss = "cross_entropy",
                 optimizer: Optimizer | None = None, l1: float = 0.0, l2: float = 0.0, seed: int = 0,
                 regularize_all: bool = False, trainable: Sequence[str] | None = None, instrument: bool = False,
                 threads: int | None = None, clip_grad_norm: float | None = None, freeze_bn: bool = False,
                 loss_weights: Sequence[float] | None = None):
        self.model = model
        # checked and defaulted once; predict's forward is never instrumented
        self._compile_options = resolve_options(threads=threads, instrument=instrument)
        self.threads = self._compile_options.threads
        # one loss per model output; several are trained on their sum weighted by loss_weights
        self.losses = [Loss.of(v) for v in loss] if isinstance(loss, (list, tuple)) else [Loss.of(loss)]
        self.loss, self.loss_name = self.losses[0], self.losses[0].name
        self.loss_weights = None if loss_weights is None else [float(w) for w in loss_weights]
        self.optimizer = optimizer if optimizer is not None else SGD(0.01)
        self.l1, self.l2, self.seed = float(l1), float(l2), int(seed)
        many = len(self.losses) > 1 or isinstance(loss, (list, tuple))
        self._options = {"loss": [v.name for v in self.losses] if many else self.loss.name,
                         "loss_attrs": [v.attrs() for v in self.losses] if many else self.loss.attrs(),
                         "soft_targets": [v.soft_targets for v in self.losses] if many else self.loss.soft_targets,
                         "loss_weights": self.loss_weights, "optimizer": self.optimizer, "seed": self.seed,
                         "l1": self.l1, "l2": self.l2,
                             "regularize_all": regularize_all, "trainable": set(trainable) if trainable else None,
                             "clip_grad_norm": clip_grad_norm is not None, "freeze_bn": bool(freeze_bn),
                             "with_outputs": True}
        self.forward = train_inputs.load_forward(model, input_shape)
        # every input's shape at the compiled batch; input_shape is the first's
        self.input_shapes = {n: self.forward.tensor(n).shape for n in self.forward.inputs}
        self.input_shape = self.input_shapes[self.forward.inputs[0]]
        self.plan: TrainingStep = build_training(self.forward, **self._options)
        # the persistent training state the native code updates in place
        self._state: dict[str, np.ndarray] = {n: np.array(v, copy=True) for n, v in self.plan.initial.items()}
        self._lr = np.array([self.optimizer.lr], dtype=np.float32)
        self._lr_value = self.optimizer.lr  # the learning rate as set, which _lr holds as float32
        self._state[self.plan.lr] = self._lr
        for name, scale in self.plan.lr_scales.items():  # parameter groups' learning rates: scale * lr
            self._state[name] = np.array([self.optimizer.lr * scale], np.float32)
        self.last_grad_norm: float | None = None  # with clip_grad_norm: the global gradient norm of the last step
        if self.plan.max_norm is not None:
            self._state[self.plan.max_norm] = np.zeros(1, np.float32)
            self.clip_grad_norm = clip_grad_norm
        self.initial_lr: float | None = None  # set by the first learning-rate schedule (convc.optim.StepLR, ...)
        self.scheduler = None  # the last schedule built on this Trainer: its state goes into checkpoints
        self._steps: dict[int, tuple[TrainingStep, CompiledModel]] = {}
        self._evals: dict[int, CompiledModel] = {}
        self._timings: dict[int, dict[str, float]] = {}  # batch -> seconds per kernel of its last step
        self._splits: dict[int, tuple[SplitStep, CompiledModel, CompiledModel]] = {}
        self._gradients: np.ndarray | None = None  # compute_gradients' buffer, made on first use
        self._grad_loss = np.zeros(1, np.float32)  # the loss the gradients in the buffer were computed with
        self._grads_pending: int | bool = False
        self._compile_step(self.input_shape[0], self.plan)

    # --- compiled variants ---------------------------------------------------------------------------
    def _forward_at(self, batch: int) -> Graph:
        if isinstance(self.model, Graph) and batch != self.input_shape[0]:
            raise InputError(f"a batch of {batch}: this Trainer was built from a Graph of batch {self.input_shape[0]}, "
                             "which fixes it; give an ONNX model or a convc.nn module to train other batch sizes")
        shapes = [(batch,) + s[1:] for s in self.input_shapes.values()]
        return train_inputs.load_forward(self.model,
                                         shapes[0] if len(shapes) == 1 else dict(zip(self.input_shapes, shapes)))

    def _compile_step(self, batch: int, plan: TrainingStep | None = None) -> tuple[TrainingStep, CompiledModel]:
        if batch not in self._steps:
            if plan is None:
                fwd = self._forward_at(batch)
                plan = build_training(fwd, **self._options)
            self._steps[batch] = (plan, compile_bound(plan.plan, self._state, self._compile_options))
        return self._steps[batch]

    def _compile_eval(self, batch: int) -> CompiledModel:
        if batch not in self._evals:
            fwd = self.forward if batch == self.input_shape[0] else self._forward_at(batch)
            self._evals[batch] = compile_bound(_eval_plan(fwd, self.plan.roles), self._state,
                                               self._compile_options.with_(instrument=False))
        return self._evals[batch]

    # --- properties ---------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return float(self._lr[0])

    @lr.setter
    def lr(self, value: float) -> None:
        if not np.isfinite(value) or value < 0:
            raise InputError(f"learning rate {value!r} must be a finite, non-negative number")
        self._lr[0] = value
        self._lr_value = float(value)
        for name, scale in self.plan.lr_scales.items():
            self._state[name][0] = value * scale

    @property
    def clip_grad_norm(self) -> float | None:
        """The gradient-norm threshold (None: no clipping). A run-time value: changing it does not
        recompile; switching clipping on or off needs a Trainer built with or without it."""
        return None if self.plan.max_norm is None else float(self._state[self.plan.max_norm][0])

    @clip_grad_norm.setter
    def clip_grad_norm(self, value: float) -> None:
        if self.plan.max_norm is None:
            raise InputError("this Trainer was built without gradient clipping: build it with clip_grad_norm=...")
        if value is None or not np.isfinite(value) or value <= 0:
            raise InputError(f"clip_grad_norm {value!r} must be a finite, positive number")
        self._state[self.plan.max_norm][0] = value

    @property
    def steps_done(self) -> int:
        """Updates applied so far (steps that raised TrainingError do not count)."""
        return int(self._state[self.plan.step][0])

    @property
    def parameters(self) -> list[str]:
        return list(self.plan.params)

    # --- checks -------------------------------------------------------------------------------------
    # The same rule as a compiled model's inputs (convc/runtime.py): nothing is converted silently.
    # x and mse/bce targets must be float32; cross-entropy labels are integer class indices (any
    # integer dtype, range-checked, then widened to int64, which loses nothing).
    def _check_x(self, x: Any) -> list[np.ndarray]:
        """Every model input's array, in the model's input order: ``x`` is one array (a model with one
        input), a list or tuple in input order, or a dict by input name."""
        names = self.forward.inputs
        if isinstance(x, Mapping):
            missing, unknown = [n for n in names if n not in x], [n for n in x if n not in names]
            if missing or unknown:
                raise InputError(f"x: missing inputs {missing}, unexpected {unknown}; the model's inputs are {names}")
            xs = [x[n] for n in names]
        elif len(names) == 1:
            xs = [x]
        elif isinstance(x, (list, tuple)):
            if len(x) != len(names):
                raise InputError(f"x has {len(x)} arrays, the model has {len(names)} inputs {names} (in this order)")
            xs = list(x)
        else:
            raise InputError(f"the model has {len(names)} inputs {names}: give x as a list of {len(names)} arrays "
                             "in that order, or a dict by input name")
        checked = []
        for name, a in zip(names, xs):
            a, want = np.asarray(a), self.input_shapes[name]
            if a.dtype != np.float32:
                raise dtype_error(f"input {name!r}", a.dtype, np.dtype(np.float32))
            if a.ndim != len(want) or a.shape[1:] != want[1:] or a.shape[0] < 1:
                raise InputError(f"input {name!r} has shape {a.shape}, expected (batch,) + {want[1:]} "
                                 f"with a batch of at least 1 (the model's input is {want})")
            check_size(f"input {name!r}", a.shape, a.dtype, InputError)  # a broadcast view of 2**31 samples
            if checked and a.shape[0] != checked[0].shape[0]:
                raise InputError(f"input {name!r} has a batch of {a.shape[0]}, input {names[0]!r} of "
                                 f"{checked[0].shape[0]}: every input needs the same number of samples")
            checked.append(np.ascontiguousarray(a))
        return checked

    def _check_y(self, y: Any, n: int, plan: TrainingStep, k: int = 0) -> np.ndarray:
        """Output ``k``'s targets."""
        y = np.asarray(y)
        loss = self.losses[k]
        out = plan.graph.tensor(plan.all_logits[k]).shape
        if plan.graph.tensor(plan.all_labels[k]).dtype.kind in "iu":  # class indices
            classes = out[1]
            if y.shape != (n,):
                raise InputError(f"labels have shape {y.shape}, expected ({n},): one class index per sample")
            if y.dtype.kind not in "iu":
                raise InputError(f"labels have dtype {y.dtype}, expected integer class indices "
                                 "(convert with .astype(np.int64))")
            ignored = y == loss.ignore_index if loss.ignore_index is not None else np.zeros(n, bool)
            bad = np.flatnonzero(((y < 0) | (y >= classes)) & ~ignored)
            if bad.size:
                raise InputError(f"labels out of range [0, {classes}): {y[bad[:5]].tolist()} at positions "
                                 f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}")
            y = np.ascontiguousarray(y, dtype=np.int64)
            return np.where(ignored, -1, y) if ignored.any() else y  # out of range: the kernel skips the sample
        if y.dtype != np.float32:
            raise InputError(f"targets have dtype {y.dtype}, expected float32 (convert with .astype(np.float32))")
        if y.shape != (n,) + out[1:]:
            raise InputError(f"targets have shape {y.shape}, expected {(n,) + out[1:]} (the model's output)")
        return np.ascontiguousarray(y)

    def _targets(self, y: Any, n: int) -> list[np.ndarray]:
        """The targets of every output, checked."""
        k = len(self.losses)
        if k == 1:
            return [self._check_y(y, n, self.plan)]
        if not isinstance(y, (list, tuple)) or len(y) != k:
            raise InputError(f"the model has {k} outputs {self.forward.outputs}: give a list of {k} targets, "
                             "one per output")
        return [self._check_y(t, n, self.plan, i) for i, t in enumerate(y)]

    def _padded(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """(xs, ys) padded with zeros to the compiled batch when smaller (the loss and BatchNorm's
        statistics count the first ``rows`` samples only), and the batch to run at."""
        n, full = xs[0].shape[0], self.input_shape[0]
        if n >= full:
            return xs, ys, n
        return [train_inputs.pad(x, full) for x in xs], [train_inputs.pad(y, full) for y in ys], full

    def _run_step(self, x: Any, y: Any, run, return_outputs: bool) -> Any:
        """Check (x, y), pad them to a compiled batch, set the loss's rows, ``run(x, y, batch)`` ->
        (loss, outputs of the step); the loss or ``StepOutputs``."""
        xs = self._check_x(x)
        n = xs[0].shape[0]
        ys = self._targets(y, n)
        xp, yp, batch = self._padded(xs, ys)
        self._state[self.plan.rows][0] = n
        loss, out = run(dict(zip(self.forward.inputs, xp)), dict(zip(self.plan.all_labels, yp)), batch)
        if not return_outputs:
            return loss
        if len(ys) > 1:
            return StepOutputs(loss, [out[t][:n].copy() for t in self.plan.all_logits], None)
        y, outputs = ys[0], out[self.plan.output][:n].copy()
        accuracy = None
        if y.ndim == 1 and outputs.ndim == 2:
            counted = y >= 0  # ignored samples (ignore_index) do not count
            accuracy = float((outputs.argmax(1)[counted] == y[counted]).mean()) if counted.any() else None
        return StepOutputs(loss, outputs, accuracy)

    # --- training -----------------------------------------------------------------------------------
    def step(self, x: Any, y: Any, return_outputs: bool = False) -> float | StepOutputs:
        """One training step on the batch (x, y): returns the loss before the update (with
        ``return_outputs``: ``StepOutputs``, the loss, the model's outputs and the accuracy).

        Raises InputError for malformed inputs and TrainingError when the loss or a gradient is not
        finite; either way the training state is left unchanged."""
        def run(x: dict[str, np.ndarray], y: dict[str, np.ndarray], batch: int) -> tuple[float, dict[str, np.ndarray]]:
            plan, model = self._compile_step(batch)
            feeds = {**x, **y}
            if self._compile_options.instrument:
                out, self._timings[batch] = model.run_timed(feeds)
            else:
                out = model.run(feeds)
            if plan.grad_norm is not None:
                self.last_grad_norm = float(out[plan.grad_norm][0])
            return float(out[plan.loss][0]), out
        before = self.steps_done
        result = self._run_step(x, y, run, return_outputs)
        loss = result.loss if isinstance(result, StepOutputs) else result
        if self.steps_done == before:
            what = f"the loss is {loss}" if not np.isfinite(loss) else "a gradient is not finite"
            raise TrainingError(f"step {before + 1}: {what}; the weights and optimizer state were not updated "
                                f"(lower the learning rate, or check the inputs for NaN/inf)")
        return result

    # --- the step in two calls: gradients, then the update ----------------------------------------------
    @property
    def gradients(self) -> np.ndarray:
        """Every parameter's gradient in one contiguous float32 array (1-D), the native buffer itself:
        ``compute_gradients`` writes it and ``apply_gradients`` reads it, so anything done to it in
        between (an allreduce across replicas, a scaling) is what the update sees. Parameter ``p``
        is ``gradients[gradient_slices[p]].reshape(shape of p)``; each starts 64-byte aligned, and
        the few padding elements between them stay 0."""
        self._gradient_buffer()
        return self._gradients

    @property
    def gradient_slices(self) -> dict[str, slice]:
        """Parameter name -> its slice of ``gradients`` (in ``parameters`` order)."""
        self._gradient_buffer()
        return dict(self._slices)

    def _gradient_buffer(self) -> None:
        if self._gradients is not None:
            return
        align = 16  # float32 elements in 64 bytes: every parameter's gradient starts 64-byte aligned
        self._slices: dict[str, slice] = {}
        at = 0
        for p in self.plan.params:
            size = int(self._state[p].size)
            self._slices[p] = slice(at, at + size)
            at += -(-size // align) * align
        raw = np.zeros(at + align, np.float32)
        skip = (-raw.ctypes.data % 64) // 4
        self._gradients = raw[skip:skip + at]

    def _split_at(self, batch: int) -> tuple[SplitStep, CompiledModel, CompiledModel]:
        if batch not in self._splits:
            fwd = self.forward if batch == self.input_shape[0] else self._forward_at(batch)
            split = build_split(fwd, **self._options)
            self._gradient_buffer()
            for p, buf in split.buffers.items():
                self._state[buf] = self._gradients[self._slices[p]].reshape(self._state[p].shape)
            for name in split.saved:  # BatchNorm batch statistics: the same small arrays at every batch size
                if name not in self._state:
                    self._state[name] = np.zeros(split.compute.graph.tensor(name).shape, np.float32)
            self._splits[batch] = (split, compile_bound(split.compute, self._state, self._compile_options),
                                   compile_bound(split.apply, self._state, self._compile_options))
        return self._splits[batch]

    def compute_gradients(self, x: Any, y: Any, accumulate: bool = False,
                          return_outputs: bool = False) -> float | StepOutputs:
        """Forward, loss and backward on the batch (x, y) into ``trainer.gradients``; returns the loss.
        Nothing of the training state changes until ``apply_gradients``.

        ``accumulate=True`` adds the gradients to those already in the buffer (the compiled step
        always adds, ``buffer += g``; without ``accumulate`` the buffer is zeroed first, a memset).
        Each call's gradients are of its batch's mean loss, so k micro-batches summed are k times
        the gradient of their union: scale ``trainer.gradients`` by 1/k before ``apply_gradients``
        to train as on the whole batch. BatchNorm's running statistics are updated (by
        ``apply_gradients``) from the last call's batch statistics."""
        def run(x: dict[str, np.ndarray], y: dict[str, np.ndarray], batch: int) -> tuple[float, dict]:
            split, compute, _ = self._split_at(batch)
            if not accumulate or not self._grads_pending:
                self._gradients.fill(0.0)
                self._grad_loss[0] = 0.0
            for name in split.saved:
                self._state[name].fill(0.0)
            out = compute.run({**x, **y})
            self._grad_loss += out[split.names.loss][0]
            self._grads_pending = batch  # the batch whose apply step (its BatchNorm count) runs next
            return float(out[split.names.loss][0]), out
        return self._run_step(x, y, run, return_outputs)

    def apply_gradients(self) -> None:
        """The optimizer update from ``trainer.gradients``, natively: the finite check (of the loss
        and the buffer), gradient clipping, every parameter's update, BatchNorm's running
        statistics and the step counter, exactly as ``step`` applies them (``compute_gradients``
        then ``apply_gradients`` leave the same weights, bit for bit). Raises TrainingError, leaving
        the state unchanged, when the loss or a gradient is not finite."""
        if not self._grads_pending:
            raise InputError("apply_gradients: no gradients to apply; call compute_gradients first")
        split, _, apply = self._splits[self._grads_pending]
        out = apply.run({split.names.loss: self._grad_loss})
        self._grads_pending = False
        if split.grad_norm is not None:
            self.last_grad_norm = float(out[split.grad_norm][0])
        if out[split.ok][0] != 1.0:
            raise TrainingError(f"step {self.steps_done + 1}: the loss is {float(self._grad_loss[0])} or a gradient is "
                                "not finite; the weights and optimizer state were not updated")

    def timings(self) -> dict[str, float]:
        """Seconds per kernel of the last step (``Trainer(..., instrument=True)``)."""
        return dict(self._timings.get(self.input_shape[0], {}))

    # --- inference ----------------------------------------------------------------------------------
    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's output in eval mode (BN running statistics, no dropout), for any number of
        samples: runs in chunks of ``batch_size`` (default: the training batch), the last padded."""
        xs = self._check_x(x)
        n = xs[0].shape[0]
        chunk = positive_int("batch_size", batch_size) or self.input_shape[0]
        model = self._compile_eval(chunk)
        out_name = model.outputs[0].name
        results = []
        for start in range(0, n, chunk):
            feeds = {name: np.ascontiguousarray(train_inputs.pad(a[start:start + chunk], chunk))
                     for name, a in zip(self.forward.inputs, xs)}
            out = model.run(feeds)[out_name]
            results.append(out[:min(chunk, n - start)].copy())
        return np.concatenate(results)

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None) -> dict[str, float]:
        """Loss and (for the class losses with class indices) accuracy in eval mode over the whole
        set, by the loss op's float64 reference (convc/ops/loss.py)."""
        from convc.ops import op_def
        if len(self.losses) > 1:
            raise InputError("evaluate computes one output's loss; this model has several (predict gives the first)")
        out = self.predict(x, batch_size).astype(np.float64)
        y = self._check_y(y, out.shape[0], self.plan)
        loss_op = self.plan.graph.op("loss_fn")
        attrs = loss_op.attrs
        if self.plan.logits != self.forward.outputs[0]:  # the model ends in (Log)Softmax, folded into the loss
            attrs = dataclasses.replace(attrs, form="log_probs")
            out = np.log(np.maximum(out, 1e-300)) if self.loss_name == "cross_entropy" else out
        loss = float(op_def(loss_op.kind).reference(attrs, out, y)[0][0])
        if y.ndim == 1 and out.ndim == 2:
            counted = y >= 0
            return {"loss": loss, "accuracy": float((out.argmax(1)[counted] == y[counted]).mean())}
        return {"loss": loss}

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, BN running statistics, optimizer state ("<param>.<state>") and
        the step counter ("step")."""
        names = self.plan.params + self.plan.running + [s for p in self.plan.params for s in self.plan.state[p]]
        return {n: self._state[n].copy() for n in names + [self.plan.step]}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays into the training state (in place: the compiled steps see them at once)."""
        own = self.state_dict()
        missing = [n for n in own if n not in state]
        unknown = [n for n in state if n not in own]
        if strict and (missing or unknown):
            raise InputError(f"load_state_dict: missing {missing}, unexpected {unknown}")
        for n, v in state.items():
            if n not in own:
                continue
            v = np.asarray(v)
            if v.shape != own[n].shape:
                raise InputError(f"load_state_dict: {n!r} has shape {v.shape}, expected {own[n].shape}")
            self._state[n][...] = v.astype(self._state[n].dtype)

    # --- checkpoints ----------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must agree on to resume this Trainer bit-exactly (besides its arrays)."""
        opt = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.optimizer).items() if k != "lr"}
        trainable = self._options["trainable"]
        loss = [v.settings() for v in self.losses] if isinstance(self._options["loss"], list) else self.loss.settings()
        return {"loss": loss, "optimizer": type(self.optimizer).__name__, "optimizer_settings": opt,
                "l1": self.l1, "l2": self.l2, "seed": self.seed, "regularize_all": self._options["regularize_all"],
                "trainable": sorted(trainable) if trainable is not None else None,
                "clip_grad_norm": self._options["clip_grad_norm"]} | \
            ({"freeze_bn": True} if self._options["freeze_bn"] else {}) | \
            ({"loss_weights": self.loss_weights} if self.loss_weights is not None else {})  # absent before

    def save(self, path: str | os.PathLike) -> None:
        """Write everything training resumes from to ``path`` (a .npz: no pickled objects, a JSON header):
        the parameters, BN running statistics, optimizer state, step counter, the learning rate
        (exact, and the float32 the step reads), the optimizer settings and the attached
        schedule's state. ``load_state(path)`` or ``Trainer.load(path, model)`` resume from it, and
        the steps after are bit-identical to the steps this Trainer would take."""
        from convc.version import __version__
        arrays = self.state_dict()
        arrays["lr"] = self._lr.copy()
        if self.plan.max_norm is not None:
            arrays["max_grad_norm"] = self._state[self.plan.max_norm].copy()
        header = {**checkpoint.identity(), "convc": __version__,
                  "model": self.forward.name, "input_shape": list(self.input_shape) if len(self.input_shapes) == 1
                  else {n: list(s) for n, s in self.input_shapes.items()}, **self._settings(),
                  "optimizer_lr": self.optimizer.lr, "lr": self._lr_value, "initial_lr": self.initial_lr,
                  "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}
        checkpoint.write(path, header, list(arrays.items()))

    def load_state(self, path: str | os.PathLike) -> None:
        """Resume from ``save(path)``'s checkpoint: every array, the learning rate and, when the
        checkpoint has one, the state of the schedule attached to this Trainer (build the same
        schedule before loading). Raises CheckpointError, changing nothing, when the file is
        damaged or its model, shapes or settings differ from this Trainer's."""
        header, arrays = checkpoint.read(path)
        path = os.fspath(path)
        ours, theirs = self._settings(), {k: header.get(k) for k in self._settings()}
        diff = [f"{k}: {theirs[k]!r} in the checkpoint, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]
        if diff:
            raise CheckpointError(f"{path}: saved by a Trainer with other settings; " + "; ".join(diff))
        own = self.state_dict()
        own["lr"] = self._lr
        if self.plan.max_norm is not None:
            own["max_grad_norm"] = self._state[self.plan.max_norm]
        missing = [n for n in own if n not in arrays]
        unknown = [n for n in arrays if n not in own]
        shapes = [f"{n!r} is {arrays[n].dtype} {arrays[n].shape} in the checkpoint, {own[n].dtype} {own[n].shape} "
                  "here" for n in own if n in arrays and (arrays[n].shape != own[n].shape or
                                                          arrays[n].dtype != own[n].dtype)]
        if missing or unknown or shapes:
            what = ([f"missing {_few(missing)}"] if missing else []) + \
                ([f"unexpected {_few(unknown)}"] if unknown else []) + shapes[:5]
            raise CheckpointError(f"{path}: the checkpoint of model {header.get('model')!r} does not fit this "
                                  f"Trainer's model {self.forward.name!r}: " + "; ".join(what))
        sched_state = header.get("scheduler")
        if sched_state is not None and self.scheduler is None:
            raise CheckpointError(f"{path}: the checkpoint has the state of a {sched_state.get('type')} schedule; "
                                  "build the same schedule on this Trainer before load_state, or resume with "
                                  "Trainer.load(path, model), which rebuilds it")
        if sched_state is not None:
            try:
                self.scheduler.load_state_dict(sched_state)
            except InputError as e:
                raise CheckpointError(f"{path}: {e}") from None
        for n, v in arrays.items():
            self._state[self.plan.max_norm if n == "max_grad_norm" else n][...] = v
        self.lr = float(header["lr"]) if np.float32(header["lr"]) == self._lr[0] else float(self._lr[0])
        self.initial_lr = header.get("initial_lr")

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any, *, input_shape: Sequence[int] | None = None,
             threads: int | None = None, instrument: bool = False) -> "Trainer":
        """A Trainer of ``model`` resumed from ``save(path)``'s checkpoint: the loss, optimizer, its
        settings, regularization and seed come from the checkpoint, and so does the schedule, rebuilt
        and attached as ``trainer.scheduler``. ``input_shape`` defaults to the saved one."""
        from convc import optim
        from convc.schedules import from_state
        header, _ = checkpoint.read(path)
        opt_cls = getattr(optim, str(header.get("optimizer")), None)
        if not (isinstance(opt_cls, type) and issubclass(opt_cls, Optimizer)):
            raise CheckpointError(f"{os.fspath(path)}: unknown optimizer {header.get('optimizer')!r}")
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in header["optimizer_settings"].items()}
        trainer = cls(model, input_shape=input_shape or header["input_shape"], loss=header["loss"],
                      optimizer=opt_cls(header["optimizer_lr"], **settings), l1=header["l1"], l2=header["l2"],
                      seed=header["seed"], regularize_all=header["regularize_all"], trainable=header["trainable"],
                      threads=threads, instrument=instrument,
                      clip_grad_norm=1.0 if header.get("clip_grad_norm") else None,  # the threshold is loaded
                      freeze_bn=bool(header.get("freeze_bn")), loss_weights=header.get("loss_weights"))
        if header.get("scheduler") is not None:
            trainer.initial_lr = header.get("initial_lr")
            from_state(trainer, header["scheduler"])
        trainer.load_state(path)
        return trainer

    def weights(self) -> dict[str, np.ndarray]:
        """The model's constants with their trained values (parameters and running statistics)."""
        return {n: self._state[n].copy() for n in self.plan.params + self.plan.running}

    def export_onnx(self, path: str | os.PathLike | None = None):
        """Write an inference ONNX model with the trained weights; returns the ModelProto.

        An ONNX source keeps its own graph with its initializers replaced; a Graph or convc.nn
        model is written by convc's exporter."""
        import onnx
        from onnx import numpy_helper
        weights = self.weights()
        proto = None
        if not isinstance(self.model, Graph) and not hasattr(self.model, "to_graph"):
            from convc.frontend.onnx.reader import read_model
            proto = onnx.ModelProto()
            proto.CopyFrom(read_model(str(self.model) if isinstance(self.model, Path) else self.model))
            inits = {t.name: i for i, t in enumerate(proto.graph.initializer)}
            if all(n in inits for n in weights):
                for n, v in weights.items():
                    old = proto.graph.initializer[inits[n]]
                    old.CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(old).dtype), n))
            else:
                proto = None  # some weights were folded at import: export the graph instead
        if proto is None:
            from convc.frontend.onnx_export import export_onnx
            g = self.forward.copy()
            for n, v in weights.items():
                g.tensor(n).data = v
            proto = export_onnx(g)
        if path is not None:
            onnx.save(proto, os.fspath(path))
        return proto


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
