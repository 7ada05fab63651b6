"""Converter and folder registries keyed by (ONNX op type, opset range).

A *converter* turns one ONNX node into convc ops (``ctx.add_op``) or constants (``ctx.set_output``).
A *folder* evaluates a node whose inputs are all constants with numpy and returns its outputs.
An op type may have both (``Add`` folds on integers and compiles on float tensors).
Families register themselves with an explicit import line in ``convc/frontend/onnx/__init__.py``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from convc.frontend.onnx.context import NodeContext

FIRST_OPSET = 6  # opset 6 (PyTorch 0.3/0.4 exports): its broadcast attributes and is_test flags are handled by
                 # the converters of Add/Sub/Mul/Div/PRelu/Sum/Max/Min, BatchNormalization and Dropout

Converter = Callable[["NodeContext"], None]
Folder = Callable[["NodeContext"], "list[np.ndarray]"]
F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class _Entry(Generic[F]):
    since: int
    until: int | None  # inclusive; None = every later opset
    fn: F

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)

    def overlaps(self, other: _Entry) -> bool:
        hi_self = self.until if self.until is not None else float("inf")
        hi_other = other.until if other.until is not None else float("inf")
        return self.since <= hi_other and other.since <= hi_self


class Registry(Generic[F]):
    """Functions keyed by op type and an inclusive opset range; overlapping ranges are an error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, list[_Entry[F]]] = {}

    def register(self, op_type: str, since: int = FIRST_OPSET, until: int | None = None) -> Callable[[F], F]:
        if until is not None and until < since:
            raise ValueError(f"{self.what} for {op_type}: opset range {since}..{until} is empty")

        def deco(fn: F) -> F:
            entry = _Entry(since, until, fn)
            for other in self._entries.get(op_type, []):
                if entry.overlaps(other):
                    raise RuntimeError(
                        f"{self.what} for {op_type} opsets {since}..{until or 'latest'} ({fn.__module__}.{fn.__name__})"
                        f" overlaps {other.since}..{other.until or 'latest'} "
                        f"({other.fn.__module__}.{other.fn.__name__})")
            self._entries.setdefault(op_type, []).append(entry)
            return fn
        return deco

    def lookup(self, op_type: str, opset: int) -> F | None:
        for entry in self._entries.get(op_type, []):
            if entry.covers(opset):
                return entry.fn
        return None

    def op_types(self) -> list[str]:
        return sorted(self._entries)


CONVERTERS: Registry[Converter] = Registry("converter")
FOLDERS: Registry[Folder] = Registry("folder")
converter = CONVERTERS.register
folder = FOLDERS.register
