"""``convc.compile_library``: what ``convc compile`` does, from Python."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convc.errors import InputError
from convc.limits import positive_int


def compile_library(model: Any, output: str | os.PathLike, *, batch: int | None = None, target: str = "native",
                    threads: int | None = None, header: str | os.PathLike | None = None, input_shape: Any = None,
                    progress: Callable[[str], None] | None = None, train: bool = False, optimizer: str = "adam",
                    lr: float | None = None, loss: str = "cross_entropy", seed: int = 0) -> Any:
    """Write ``model`` (whatever ``convc.compile`` takes) as a shared library with its weights embedded
    (an object file when ``output`` ends in ``.o``) and its C header (default: ``output`` with ``.h``),
    as ``convc compile`` does. Load the library with ``convc.load(output)``.

    ``batch`` fixes the batch (default 1: a library's shapes are fixed), ``target`` the CPU
    (``"native"``, ``"x86-64-v3"``, ``"aarch64"``, ...), ``threads`` the most worker threads a context
    may use. ``train=True`` builds a training library (``convc compile --train``) with ``optimizer``,
    ``lr``, ``loss`` and Dropout's ``seed``; its step runs on the calling thread, so ``threads`` must
    stay None. Returns the build's result (``.output``, ``.header``, ``.size``, ``.meta``, ...)."""
    batch, threads = positive_int("batch", batch), positive_int("threads", threads)
    if isinstance(model, Path):
        model = str(model)
    from convc.compiler import build, build_training_library  # what `convc compile` calls
    if train:
        if threads is not None:
            raise InputError("compile_library(train=True) takes no threads: the training step runs on the calling thread")
        if input_shape is not None:
            raise InputError("compile_library(train=True) takes no input_shape: pass a convc.nn module's "
                             "model.to_graph(shape)")
        return build_training_library(model, output, batch=batch, optimizer=optimizer, lr=lr, loss=loss, seed=seed,
                                      target=target, progress=progress, header=header)
    return build(model, output, batch=batch, target=target, threads=threads, input_shape=input_shape,
                 progress=progress, header=header)
