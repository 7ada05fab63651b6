"""What a training step returns (``StepOutputs``) or raises (``TrainingError``); the Trainer and
the loaded training libraries (convc/load.py) share them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convc.errors import ConvcError

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



