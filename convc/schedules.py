"""Learning-rate schedules for ``convc.Trainer``, with PyTorch's formulas and step semantics.

The learning rate is a run-time input of the compiled training step, so a schedule changes it
between steps without recompiling. A schedule is built on a Trainer, sets ``trainer.lr`` to its
value at epoch 0 at once (as PyTorch's schedulers do), and moves one epoch on each ``step()``:

    trainer = convc.Trainer(model, input_shape=(32, 3, 32, 32), optimizer=convc.optim.SGD(0.1, momentum=0.9))
    sched = convc.optim.CosineAnnealingLR(trainer, T_max=epochs)
    for epoch in range(epochs):
        for x, y in batches:
            trainer.step(x, y)
        sched.step()

``initial_lr`` is the Trainer's learning rate when its first schedule is built (PyTorch's
``group["initial_lr"]``); every schedule starts from it. The last schedule built is
``trainer.scheduler`` and its state goes into ``trainer.save``'s checkpoints. The learning rate is
computed in float64, like PyTorch's, and the compiled step reads it as float32.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "LinearLR", "MultiStepLR", "OneCycleLR",
           "ReduceLROnPlateau", "SequentialLR", "StepLR"]


def _exact_lr(trainer: Any) -> float:
    """The Trainer's learning rate as last set (a Python float), not its float32 copy."""
    value = getattr(trainer, "_lr_value", None)
    return float(value) if value is not None and float(trainer.lr) == _f32(value) else float(trainer.lr)


def _f32(value: float) -> float:
    import numpy as np
    return float(np.float32(value))


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


class LRScheduler:
    """Base class: ``lr_at(epoch)`` is the closed form; ``step()`` moves one epoch and sets the
    Trainer's learning rate. ``last_epoch`` counts the steps taken (0 after construction)."""

    def __init__(self, trainer: Any, *, _initial: bool = True):
        self.trainer = trainer
        if getattr(trainer, "initial_lr", None) is None:
            trainer.initial_lr = _exact_lr(trainer)
        self.base_lr = float(trainer.initial_lr)
        self.last_epoch = -1
        self._last_lr = self.base_lr
        if _initial:
            self.step()
        trainer.scheduler = self

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Move one epoch (or one batch, for schedules stepped per batch) and set the learning rate."""
        self.last_epoch += 1
        self._set(self.lr_at(self.last_epoch))

    def _set(self, lr: float) -> None:
        self._last_lr = float(lr)
        self.trainer.lr = self._last_lr

    def get_last_lr(self) -> list[float]:
        """The learning rate the last step set, as a list (one group), like PyTorch's."""
        return [self._last_lr]

    # --- state ---------------------------------------------------------------------------------------
    _settings: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments (what a checkpoint checks against the schedule it is loaded into)."""
        return {k: getattr(self, k) for k in self._settings}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: the settings, the epoch, the base and last learning rates."""
        return {"type": type(self).__name__, "settings": self.settings(), "last_epoch": self.last_epoch,
                "base_lr": self.base_lr, "last_lr": self._last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s state (the learning rate itself is the Trainer's to restore)."""
        from convc.errors import InputError
        if state.get("type") != type(self).__name__:
            raise InputError(f"scheduler state of a {state.get('type')} cannot load into a {type(self).__name__}")
        ours = _jsonable(self.settings())
        if state.get("settings") != ours:
            diff = [k for k in ours if ours[k] != state.get("settings", {}).get(k)]
            raise InputError(f"{type(self).__name__} settings differ: " + ", ".join(
                f"{k} is {ours[k]!r} here, {state.get('settings', {}).get(k)!r} in the state" for k in diff))
        self.last_epoch = int(state["last_epoch"])
        self.base_lr = float(state["base_lr"])
        self._last_lr = float(state["last_lr"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def _jsonable(value: Any) -> Any:
    """Tuples as lists, as JSON gives them back."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)``."""

    _settings = ("step_size", "gamma")

    def __init__(self, trainer: Any, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = _check_positive_int("step_size", step_size), float(gamma)
        super().__init__(trainer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (milestones reached)`` (a milestone given twice counts twice)."""

    _settings = ("milestones", "gamma")

    def __init__(self, trainer: Any, milestones: Sequence[int], gamma: float = 0.1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(trainer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """``lr = initial_lr * gamma ** epoch``."""

    _settings = ("gamma",)

    def __init__(self, trainer: Any, gamma: float):
        self.gamma = float(gamma)
        super().__init__(trainer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2`` (past T_max it
    rises again, as PyTorch's does)."""

    _settings = ("T_max", "eta_min")

    def __init__(self, trainer: Any, T_max: int, eta_min: float = 0.0):
        self.T_max, self.eta_min = _check_positive_int("T_max", T_max), float(eta_min)
        super().__init__(trainer)

    def lr_at(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """Warmup (or decay): the factor goes linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs, then stays; ``lr = initial_lr * factor``."""

    _settings = ("start_factor", "end_factor", "total_iters")

    def __init__(self, trainer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"start_factor={start_factor!r} must be in (0, 1] and end_factor={end_factor!r} in [0, 1]")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = _check_positive_int("total_iters", total_iters)
        super().__init__(trainer)

    def lr_at(self, epoch: int) -> float:
        done = min(self.total_iters, epoch)
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done / self.total_iters)


class OneCycleLR(LRScheduler):
    """The 1cycle policy, stepped once per batch: from ``max_lr / div_factor`` up to ``max_lr`` over
    ``pct_start`` of ``total_steps`` (or ``epochs * steps_per_epoch``), then down to ``initial /
    final_div_factor``; ``three_phase`` comes back to the initial value before the final descent.

    Unlike PyTorch's it does not cycle the momentum: the momentum is compiled into the step
    (``cycle_momentum=True`` is refused rather than silently ignored)."""

    _settings = ("max_lr", "total_steps", "pct_start", "anneal_strategy", "div_factor", "final_div_factor",
                 "three_phase")

    def __init__(self, trainer: Any, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = False, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False):
        if cycle_momentum:
            raise ValueError("convc's OneCycleLR does not cycle the momentum (it is compiled into the training "
                             "step); pass cycle_momentum=False")
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
            total_steps = _check_positive_int("epochs", epochs) * \
                _check_positive_int("steps_per_epoch", steps_per_epoch)
        self.total_steps = _check_positive_int("total_steps", total_steps)
        if not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start={pct_start!r} must be between 0 and 1")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy={anneal_strategy!r} must be 'cos' or 'linear'")
        self.max_lr, self.pct_start, self.anneal_strategy = float(max_lr), float(pct_start), anneal_strategy
        self.div_factor, self.final_div_factor, self.three_phase = float(div_factor), float(final_div_factor), \
            bool(three_phase)
        # PyTorch sets the group's initial_lr to max_lr / div_factor, whatever the optimizer's lr
        trainer.initial_lr = self.max_lr / self.div_factor
        super().__init__(trainer)

    def _phases(self) -> list[tuple[float, float, float]]:
        initial = self.base_lr
        low = initial / self.final_div_factor
        n, pct = self.total_steps, self.pct_start
        if self.three_phase:
            return [(pct * n - 1, initial, self.max_lr), (2 * pct * n - 2, self.max_lr, initial), (n - 1, initial, low)]
        return [(pct * n - 1, initial, self.max_lr), (n - 1, self.max_lr, low)]

    def lr_at(self, epoch: int) -> float:
        if epoch > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {epoch} times; total_steps is {self.total_steps}")
        start = 0.0
        phases = self._phases()
        for i, (end, lo, hi) in enumerate(phases):
            if epoch <= end or i == len(phases) - 1:
                pct = (epoch - start) / (end - start)
                if self.anneal_strategy == "cos":
                    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (hi - lo) * pct + lo
            start = end
        raise AssertionError("unreachable")


class SequentialLR(LRScheduler):
    """Schedules one after another: ``schedulers[i]`` runs from ``milestones[i-1]`` on, restarted at
    its epoch 0 there (warmup then cosine: ``SequentialLR(t, [LinearLR(t, 0.1, total_iters=5),
    CosineAnnealingLR(t, T_max=95)], milestones=[5])``)."""

    def __init__(self, trainer: Any, schedulers: Sequence[LRScheduler], milestones: Sequence[int]):
        schedulers = list(schedulers)
        if not schedulers or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR takes n schedulers and n - 1 milestones, got {len(schedulers)} and "
                             f"{len(milestones)}")
        for s in schedulers:
            if s.trainer is not trainer:
                raise ValueError(f"{type(s).__name__} schedules another Trainer than this SequentialLR")
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError("ReduceLROnPlateau has no closed form and cannot run inside SequentialLR")
        self.schedulers, self.milestones = schedulers, [int(m) for m in milestones]
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones {self.milestones} must be increasing")
        trainer.initial_lr = schedulers[0].base_lr
        super().__init__(trainer)

    def settings(self) -> dict[str, Any]:
        return {"milestones": self.milestones, "schedulers": [s.state_dict()["type"] for s in self.schedulers],
                "scheduler_settings": [s.settings() for s in self.schedulers]}

    def lr_at(self, epoch: int) -> float:
        i = bisect_right(self.milestones, epoch)
        return self.schedulers[i].lr_at(epoch - (self.milestones[i - 1] if i else 0))

    def step(self) -> None:
        super().step()
        i = bisect_right(self.milestones, self.last_epoch)
        s = self.schedulers[i]
        s.last_epoch, s._last_lr = self.last_epoch - (self.milestones[i - 1] if i else 0), self._last_lr


class ReduceLROnPlateau(LRScheduler):
    """Multiply the learning rate by ``factor`` when the metric given to ``step(metric)`` has not
    improved for more than ``patience`` epochs (``mode`` "min" or "max", ``threshold`` relative or
    absolute); then wait ``cooldown`` epochs; never below ``min_lr``; a change smaller than ``eps``
    is skipped. It starts from the Trainer's current learning rate and leaves it there."""

    _settings = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")

    def __init__(self, trainer: Any, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError(f"factor={factor!r} must be below 1")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"mode={mode!r} must be 'min' or 'max' and threshold_mode={threshold_mode!r} "
                             "'rel' or 'abs'")
        self.mode, self.factor, self.patience, self.threshold = mode, float(factor), int(patience), float(threshold)
        self.threshold_mode, self.cooldown, self.min_lr, self.eps = threshold_mode, int(cooldown), float(min_lr), \
            float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(trainer, _initial=False)
        self.last_epoch = 0
        self._last_lr = _exact_lr(trainer)

    def _is_better(self, a: float) -> bool:
        if self.mode == "min":
            rel = self.threshold_mode == "rel"
            return a < (self.best * (1 - self.threshold) if rel else self.best - self.threshold)
        return a > (self.best * (self.threshold + 1) if self.threshold_mode == "rel" else self.best + self.threshold)

    def step(self, metrics: float) -> None:  # type: ignore[override]
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = _exact_lr(self.trainer)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self._set(new)
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = _exact_lr(self.trainer)

    def lr_at(self, epoch: int) -> float:
        raise TypeError("ReduceLROnPlateau has no closed form: its learning rate depends on the metrics")

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"best": self.best, "num_bad_epochs": self.num_bad_epochs,
                                       "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best = float(state["best"])
        self.num_bad_epochs, self.cooldown_counter = int(state["num_bad_epochs"]), int(state["cooldown_counter"])


def from_state(trainer: Any, state: dict[str, Any]) -> LRScheduler:
    """Rebuild the schedule ``state_dict()`` describes on ``trainer`` and load its state (what
    ``convc.Trainer.load`` does with a checkpoint's schedule)."""
    classes = {c.__name__: c for c in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, OneCycleLR,
                                       SequentialLR, ReduceLROnPlateau)}
    kind, settings = state.get("type"), dict(state.get("settings", {}))
    if kind not in classes:
        from convc.errors import InputError
        raise InputError(f"unknown learning-rate schedule {kind!r} in the state")
    lr = _exact_lr(trainer)
    if kind == "SequentialLR":
        children = [from_state(trainer, {"type": t, "settings": s, "last_epoch": 0, "base_lr": trainer.initial_lr,
                                         "last_lr": trainer.initial_lr})
                    for t, s in zip(settings["schedulers"], settings["scheduler_settings"])]
        sched: LRScheduler = SequentialLR(trainer, children, settings["milestones"])
    else:
        sched = classes[kind](trainer, **settings)
    sched.load_state_dict(state)
    trainer.lr = lr  # building it set the learning rate of its epoch 0
    return sched
