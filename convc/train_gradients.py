"""The training step in two calls around one gradient buffer: ``Trainer.compute_gradients`` (forward,
loss, backward into ``trainer.gradients``) and ``apply_gradients`` (the optimizer update from it),
for data-parallel training and accumulation over micro-batches. The two compiled halves come from
passes/autodiff/training.py ``build_split``; ``Trainer._split_at`` compiles them per batch size."""
from __future__ import annotations

from typing import Any

import numpy as np

from convc.errors import InputError
from convc.train_results import StepOutputs, TrainingError


class GradientSteps:
    """``convc.Trainer``'s two-call step (a mixin: it reads the Trainer's plan and state)."""

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
