"""The losses ``convc.Trainer`` trains with, named and configured as PyTorch's.

    convc.Trainer(model, input_shape=..., loss="cross_entropy")
    convc.Trainer(model, input_shape=..., loss=convc.Loss("cross_entropy", label_smoothing=0.1,
                                                          weight=[1.0, 2.0, ...], ignore_index=-100))

| name | PyTorch | targets |
|---|---|---|
| cross_entropy | CrossEntropyLoss (a final Softmax is folded in) | class indices, or probabilities with soft_targets |
| nll | NLLLoss on log-probabilities (a final LogSoftmax is folded in) | class indices, or probabilities |
| mse, l1 | MSELoss, L1Loss | float, shaped like the output |
| huber, smooth_l1 | HuberLoss(delta), SmoothL1Loss(beta): ``delta`` holds either | float |
| bce, bce_with_logits | BCELoss on probabilities, BCEWithLogitsLoss | float in [0, 1] |

Every loss is the mean over the batch (``reduction='mean'``); with class ``weight`` the mean of the
class losses divides by the weights of the samples' classes, and samples whose label is
``ignore_index`` count for nothing, as in PyTorch. The formulas: convc/ops/loss.py.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from convc.errors import InputError
from convc.ops.loss import LossAttrs
from convc.passes.autodiff.training import CLASS_LOSSES, LOSSES

__all__ = ["LOSS_NAMES", "Loss"]

LOSS_NAMES = tuple(LOSSES)


@dataclass(frozen=True)
class Loss:
    """A loss by name (``LOSS_NAMES``) with PyTorch's options: ``label_smoothing``, ``weight`` (one
    per class), ``ignore_index`` and ``soft_targets`` (targets are class probabilities, shaped like
    the output) for cross_entropy and nll; ``delta`` for huber (its delta) and smooth_l1 (its beta)."""
    name: str = "cross_entropy"
    label_smoothing: float = 0.0
    weight: tuple[float, ...] | None = None
    ignore_index: int | None = None
    soft_targets: bool = False
    delta: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise InputError(f"unknown loss {self.name!r}; convc has {', '.join(LOSS_NAMES)}")
        classes = self.name in CLASS_LOSSES
        used = {"label_smoothing": self.label_smoothing != 0.0, "weight": self.weight is not None,
                "ignore_index": self.ignore_index is not None, "soft_targets": self.soft_targets}
        wrong = [k for k, on in used.items() if on and not classes]
        if self.delta != 1.0 and self.name not in ("huber", "smooth_l1"):
            wrong.append("delta")
        if wrong:
            raise InputError(f"loss {self.name!r} has no option {', '.join(wrong)}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise InputError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1]")
        if not (self.delta > 0 and math.isfinite(self.delta)):
            raise InputError(f"delta={self.delta!r} must be a positive number")
        if self.weight is not None:
            w = tuple(float(v) for v in self.weight)
            if not w or not all(math.isfinite(v) and v >= 0 for v in w):
                raise InputError(f"class weights must be finite and non-negative, got {list(self.weight)[:8]}")
            object.__setattr__(self, "weight", w)
        if self.ignore_index is not None:
            if self.soft_targets:
                raise InputError("ignore_index applies to class indices, not to soft targets")
            object.__setattr__(self, "ignore_index", int(self.ignore_index))

    @classmethod
    def of(cls, loss: "str | Loss | Mapping[str, Any]") -> "Loss":
        """A Loss from its name, itself, or ``settings()`` (a checkpoint's)."""
        if isinstance(loss, Loss):
            return loss
        if isinstance(loss, str):
            return cls(loss)
        if isinstance(loss, Mapping):
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in loss.items()})
        raise InputError(f"loss must be a name or a convc.Loss, got {type(loss).__name__}")

    def attrs(self) -> LossAttrs:
        """The loss op's options (convc/ops/loss.py)."""
        return LossAttrs(label_smoothing=self.label_smoothing, weights=self.weight or (), delta=self.delta)

    def settings(self) -> str | dict[str, Any]:
        """The name alone for the default options, else every field (JSON)."""
        if self == Loss(self.name):
            return self.name
        return {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                for k, v in asdict(self).items()}
