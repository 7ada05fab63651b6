"""Optimizers for ``convc.Trainer``: what each parameter's update op computes, PyTorch's defaults.

Each optimizer says which update op (convc/ops/optim.py) a parameter gets and what its state starts
at; the compiled training step applies every update in place, in the same native call as the
forward and backward passes. ``weight_decay`` is the optimizer's own decay and applies to every
parameter, as in PyTorch; ``convc.Trainer(l1=..., l2=...)`` adds regularization on weights only.

    opt = convc.optim.SGD(0.1, momentum=0.9, nesterov=True)
    opt = convc.optim.Adam(1e-3)
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convc.errors import CompileError
from convc.ops import OpKind
from convc.ops.optim import AdagradAttrs, AdamAttrs, MomentumAttrs, RmsPropAttrs, SgdAttrs

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop"]


ROLES = ("weight", "bias", "norm")  # the parameter roles a group can name (passes/autodiff/training.py)


def _check_groups(groups: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for i, g in enumerate(groups or ()):
        if not isinstance(g, Mapping) or "params" not in g:
            raise ValueError(f"parameter group {i} must be a dict with 'params' (names or roles {ROLES})")
        unknown = set(g) - {"params", "weight_decay", "lr_scale"}
        if unknown:
            raise ValueError(f"parameter group {i} has unknown keys {sorted(unknown)}; a group sets 'weight_decay' "
                             "and 'lr_scale' (its learning rate is lr_scale times trainer.lr)")
        params = [g["params"]] if isinstance(g["params"], str) else [str(p) for p in g["params"]]
        group: dict[str, Any] = {"params": params}
        if "weight_decay" in g:
            if not g["weight_decay"] >= 0:
                raise ValueError(f"parameter group {i}: weight_decay={g['weight_decay']!r} must be >= 0")
            group["weight_decay"] = float(g["weight_decay"])
        if "lr_scale" in g:
            if not 0 < g["lr_scale"] < float("inf"):
                raise ValueError(f"parameter group {i}: lr_scale={g['lr_scale']!r} must be positive and finite")
            group["lr_scale"] = float(g["lr_scale"])
        out.append(group)
    return out


class Optimizer:
    """Base class: ``lr`` is the initial learning rate (``trainer.lr`` changes it between steps).

    ``groups``: parameter groups, the first that lists a parameter wins, the others use the
    optimizer's own settings. A group is a dict: ``"params"``, parameter names or roles ("weight":
    Conv/Gemm/MatMul weights, "bias": their biases, constant Add operands and the shift of a LayerNorm,
    InstanceNorm or GroupNorm, "norm": BatchNorm's scale and shift, those norms' scales and layer
    scales); ``"weight_decay"``, the group's; ``"lr_scale"``, its learning rate as a multiple of
    ``trainer.lr`` (schedules scale every group alike). No decay on biases and BN:
    ``groups=[{"params": ["bias", "norm"], "weight_decay": 0.0}]``."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, groups: Sequence[Mapping[str, Any]] | None = None):
        if not lr > 0:
            raise ValueError(f"learning rate lr={lr} must be positive")
        self.lr = float(lr)
        self.groups = _check_groups(groups)

    def for_param(self, name: str, role: str) -> tuple["Optimizer", float]:
        """The optimizer settings of parameter ``name`` (of ``role``) and its learning-rate scale."""
        for g in self.groups:
            if name in g["params"] or role in g["params"]:
                opt = copy.copy(self)
                if "weight_decay" in g:
                    opt.weight_decay = g["weight_decay"]
                return opt, g.get("lr_scale", 1.0)
        return self, 1.0

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        """The update op and its attributes for a parameter regularized by ``l1``/``l2`` (on top of
        the optimizer's weight decay)."""
        raise NotImplementedError

    def initial_state(self, x: np.ndarray, attrs: Any) -> list[np.ndarray]:
        return [np.zeros_like(x) for _ in range(attrs.n_states)]

    def state_labels(self, attrs: Any) -> list[str]:
        return list(self.state_names[:attrs.n_states])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "groups" or v)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """``x -= lr * v`` with ``v = momentum * v + (1 - dampening) * g`` (v = g on the first step);
    Nesterov uses ``g + momentum * v``. ``momentum=0`` is plain SGD."""

    state_names = ("momentum_buffer",)

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0,
                 weight_decay: float = 0.0, groups: Sequence[Mapping[str, Any]] | None = None):
        super().__init__(lr, groups)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and no dampening")
        self.momentum, self.nesterov, self.dampening = float(momentum), bool(nesterov), float(dampening)
        self.weight_decay = float(weight_decay)

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        l2 += self.weight_decay
        if self.momentum == 0.0:
            return OpKind.SGD_UPDATE, SgdAttrs(l1, l2)
        return OpKind.MOMENTUM_UPDATE, MomentumAttrs(self.momentum, 1.0 - self.dampening, self.nesterov, l1, l2)


class Adagrad(Optimizer):
    """``h += g^2``; ``x -= lr / (1 + t * lr_decay) * g / (sqrt(h) + eps)``."""

    state_names = ("sum",)

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 groups: Sequence[Mapping[str, Any]] | None = None):
        super().__init__(lr, groups)
        self.lr_decay, self.weight_decay = float(lr_decay), float(weight_decay)
        self.initial_accumulator_value, self.eps = float(initial_accumulator_value), float(eps)

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        return OpKind.ADAGRAD_UPDATE, AdagradAttrs(self.lr_decay, self.eps, l1, l2 + self.weight_decay)

    def initial_state(self, x: np.ndarray, attrs: Any) -> list[np.ndarray]:
        return [np.full_like(x, self.initial_accumulator_value)]


class RMSprop(Optimizer):
    """``v = alpha v + (1 - alpha) g^2``; ``x -= lr g / (sqrt(v) + eps)`` (centered: v minus the
    squared mean gradient; with momentum the step goes through a momentum buffer)."""

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, groups: Sequence[Mapping[str, Any]] | None = None):
        super().__init__(lr, groups)
        self.alpha, self.eps, self.weight_decay = float(alpha), float(eps), float(weight_decay)
        self.momentum, self.centered = float(momentum), bool(centered)

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        return OpKind.RMSPROP_UPDATE, RmsPropAttrs(self.alpha, self.eps, self.momentum, self.centered, l1,
                                                   l2 + self.weight_decay)

    def state_labels(self, attrs: Any) -> list[str]:
        return ["square_avg"] + (["grad_avg"] if attrs.centered else []) + \
            (["momentum_buffer"] if attrs.momentum else [])


class Adam(Optimizer):
    """PyTorch's Adam: bias-corrected moments, ``weight_decay`` as an L2 term added to the gradient."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, groups: Sequence[Mapping[str, Any]] | None = None):
        super().__init__(lr, groups)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        b1, b2 = self.betas
        return OpKind.ADAM_UPDATE, AdamAttrs(b1, b2, self.eps, l1, l2 + self.weight_decay, torch=True)


class AdamW(Adam):
    """PyTorch's AdamW: Adam with decoupled weight decay, ``x *= 1 - lr * weight_decay`` each step."""

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, groups: Sequence[Mapping[str, Any]] | None = None):
        super().__init__(lr, betas, eps, weight_decay, groups)

    def update(self, l1: float, l2: float) -> tuple[OpKind, Any]:
        b1, b2 = self.betas
        return OpKind.ADAM_UPDATE, AdamAttrs(b1, b2, self.eps, l1, l2, weight_decay=self.weight_decay, torch=True)


# the optimizers ``convc compile --train --optimizer`` names, with their default learning rates
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 0.01, "adagrad": 0.01}
OPTIMIZERS = tuple(DEFAULT_LR)


def by_name(name: str, lr: float | None = None) -> Optimizer:
    """The optimizer ``name`` (one of OPTIMIZERS; "momentum" is SGD with momentum 0.9) at ``lr`` (default:
    DEFAULT_LR)."""
    if name not in DEFAULT_LR:
        raise CompileError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else lr
    return {"sgd": lambda: SGD(lr), "momentum": lambda: SGD(lr, momentum=0.9), "adam": lambda: Adam(lr),
            "adamw": lambda: AdamW(lr), "rmsprop": lambda: RMSprop(lr), "adagrad": lambda: Adagrad(lr)}[name]()


# learning-rate schedules (convc/schedules.py), here as in torch.optim.lr_scheduler's place
from convc.schedules import (CosineAnnealingLR, ExponentialLR, LinearLR, LRScheduler, MultiStepLR,  # noqa: E402
                             OneCycleLR, ReduceLROnPlateau, SequentialLR, StepLR)

__all__ += ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "LinearLR", "MultiStepLR", "OneCycleLR",
            "ReduceLROnPlateau", "SequentialLR", "StepLR"]
