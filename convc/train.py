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

This module holds the Trainer's construction, its compiled variants and the step; the rest of its
interface comes from mixins by concept: the two-call step (train_gradients.py), eval mode and ONNX
export (train_eval.py), state and checkpoints (train_state.py); train_batch.py checks what a step
is fed, the driver's ``load_forward`` loads the forward graph. Every compile goes through this
module's ``compile_bound``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convc import train_batch
from convc.checkpoint import CheckpointError
from convc.driver import compile_bound
from convc.driver import eval_plan as _eval_plan
from convc.driver import load_forward
from convc.errors import InputError
from convc.ir import Graph
from convc.losses import Loss
from convc.optim import SGD, Optimizer
from convc.model import CompiledModel
from convc.options import resolve_options
from convc.passes.autodiff.training import SplitStep, TrainingStep, build_split, build_training
from convc.train_eval import Evaluation
from convc.train_gradients import GradientSteps
from convc.train_results import StepOutputs, TrainingError
from convc.train_state import TrainingState

from convc.gradient_check import GradcheckResult, gradcheck  # noqa: F401  (convc.train's API since before)

__all__ = ["CheckpointError", "GradcheckResult", "StepOutputs", "Trainer", "TrainingError", "gradcheck"]


# --- the Trainer ---------------------------------------------------------------------------------------
class Trainer(GradientSteps, Evaluation, TrainingState):
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
    weights of their sum, default 1), and ``y`` is then a list of targets, one per output, or a
    dict by output name.
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
        self.forward = load_forward(model, input_shape)
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
        return load_forward(self.model, shapes[0] if len(shapes) == 1 else dict(zip(self.input_shapes, shapes)))

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

    def timings(self) -> dict[str, float]:
        """Seconds per kernel of the last step (``Trainer(..., instrument=True)``)."""
        return dict(self._timings.get(self.input_shape[0], {}))

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

    # --- checks (convc/train_batch.py) ---------------------------------------------------------------
    def _check_x(self, x: Any) -> list[np.ndarray]:
        """Every model input's array, in the model's input order: ``x`` is one array (a model with one
        input), a list or tuple in input order, or a dict by input name."""
        return train_batch.check_inputs(x, self.input_shapes)

    def _check_y(self, y: Any, n: int, plan: TrainingStep, k: int = 0) -> np.ndarray:
        """Output ``k``'s targets."""
        return train_batch.check_target(y, n, plan.graph.tensor(plan.all_logits[k]).shape,
                                        plan.graph.tensor(plan.all_labels[k]).dtype.kind in "iu",
                                        self.losses[k].ignore_index)

    def _targets(self, y: Any, n: int) -> list[np.ndarray]:
        """The targets of every output, checked."""
        ys = train_batch.per_output(y, self.forward.outputs)
        return [self._check_y(t, n, self.plan, i) for i, t in enumerate(ys)]

    def _padded(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """(xs, ys) padded with zeros to the compiled batch when smaller (the loss and BatchNorm's
        statistics count the first ``rows`` samples only), and the batch to run at."""
        n, full = xs[0].shape[0], self.input_shape[0]
        if n >= full:
            return xs, ys, n
        return [train_batch.pad(x, full) for x in xs], [train_batch.pad(y, full) for y in ys], full

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
