"""``convc.compile_library``: what ``convc compile`` does, from Python; and ``LoadedTrainer``, what
``convc.load`` returns for a training library (``convc compile --train``), which runs on ctypes and
numpy alone (no llvmlite, no compiler).

A training library's C ABI (codegen/aot_train.py, the header documents it) takes every model input
and one targets array per output as arrays of pointers (``convc_train_step_v``), each output with
its loss and weight (``convc_label_loss``, ``convc_loss_weight``), as ``convc.Trainer`` trains.
"""
from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convc import abi
from convc.artifact import LoadError
from convc.errors import InputError
from convc.limits import positive_int


def compile_library(model: Any, output: str | os.PathLike, *, batch: int | None = None, target: str = "native",
                    threads: int | None = None, header: str | os.PathLike | None = None, input_shape: Any = None,
                    progress: Callable[[str], None] | None = None, train: bool = False, optimizer: str = "adam",
                    lr: float | None = None, loss: Any = "cross_entropy", seed: int = 0,
                    loss_weights: Sequence[float] | None = None) -> Any:
    """Write ``model`` (whatever ``convc.compile`` takes) as a shared library with its weights embedded
    (an object file when ``output`` ends in ``.o``) and its C header (default: ``output`` with ``.h``),
    as ``convc compile`` does. Load the library with ``convc.load(output)``.

    ``batch`` fixes the batch (default 1: a library's shapes are fixed), ``target`` the CPU
    (``"native"``, ``"x86-64-v3"``, ``"aarch64"``, ...), ``threads`` the most worker threads a context
    may use. ``train=True`` builds a training library (``convc compile --train``) with ``optimizer``,
    ``lr``, ``loss`` (a name or a ``convc.Loss`` with its options) and Dropout's ``seed``; a model
    with several outputs takes a list of losses, one per output, trained on their sum weighted by ``loss_weights`` (default 1 each), as
    ``convc.Trainer``. Its step runs on the calling thread, so ``threads`` must stay None. Returns the build's result (``.output``, ``.header``, ``.size``, ``.meta``, ...)."""
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
                                      target=target, progress=progress, header=header, loss_weights=loss_weights)
    if loss_weights is not None:
        raise InputError("compile_library(loss_weights=...) applies to a training library: add train=True")
    return build(model, output, batch=batch, target=target, threads=threads, input_shape=input_shape,
                 progress=progress, header=header)


# --- a training library loaded: convc.load(train.so) ----------------------------------------------------
class LoadedTrainer:
    """A training library (``convc compile MODEL -o train.so --train``) driven from Python.

    It owns one context, hence one training state, stepped on the calling thread; the interface
    follows ``convc.Trainer``: ``step(x, y) -> loss``, ``lr``, ``steps_done``, ``predict(x)``,
    ``state_dict()`` / ``load_state_dict()``, ``weights()``. A model with several inputs takes
    ``x`` as a list (input order) or a dict by name, and one with several outputs ``y`` as a list
    of targets, one per output, or a dict by output name (``targets``, ``losses`` and ``loss_weights`` describe them), as the
    Trainer does; a batch holds at most the compiled batch's samples (``batch``), and a smaller one
    trains as the Trainer trains it. ``compute_gradients`` / ``apply_gradients``: the step in two calls."""

    def __init__(self, lib: ctypes.CDLL, info: Any):
        from convc.load import _agrees, _bind, _check_specs, _compiled_specs, _json_names
        self._lib = lib
        self.path = path = info.path
        self.metadata = info.meta
        self._training = training = info.meta["training"]
        if not isinstance(training, dict) or not all(isinstance(training.get(k), t) for k, t in (
                ("state", list), ("labels", dict), ("params", list), ("running", list), ("lr_name", str),
                ("loss", str), ("optimizer", str))):
            raise LoadError(f"{path}: the training part of its metadata JSON is malformed; rebuild it")
        self.inputs, self.outputs = info.inputs, info.outputs
        if len(self.inputs) < 1 or len(self.outputs) < 1:
            raise LoadError(f"{path}: a training library has inputs and outputs, this one "
                            f"{len(self.inputs)} and {len(self.outputs)}")
        # the state and the targets: sizes from the compiled functions, checked against the JSON
        state = _compiled_specs(lib, path, abi.STATE, "training state", _json_names(training, "state", path))
        _check_specs(path, "training state", training["state"], state)
        self.targets, self.losses, self.loss_weights, self._ignore = self._targets(lib, path, training)
        self.labels = self.targets[0]
        names = {spec.name for spec in state}
        unknown = [n for n in training["params"] + training["running"] + [training["lr_name"]] if n not in names]
        if unknown:
            raise LoadError(f"{path}: its metadata JSON names training state the library does not have: {unknown}")
        self.loss_name = self.losses[0]
        self._destroy = _bind(lib, abi.DESTROY, None, [ctypes.c_void_p])
        pointers = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)]
        # the array form (any number of inputs and outputs); a library built before it has the one-pointer form
        self._step_v = _bind(lib, abi.TRAIN_STEP_V, ctypes.c_int, pointers)
        # any batch up to the compiled one; a library built before it steps the compiled batch only
        self._step_n = _bind(lib, abi.TRAIN_STEP_N, ctypes.c_int, pointers[:3] + [ctypes.c_int64] + pointers[3:])
        self._gradients_n = _bind(lib, abi.COMPUTE_GRADIENTS_N, ctypes.c_int,
                                  pointers[:3] + [ctypes.c_int64] + pointers[3:] + [ctypes.c_int])
        self._apply = _bind(lib, abi.APPLY_GRADIENTS, ctypes.c_int, [ctypes.c_void_p])
        self._step = _bind(lib, abi.TRAIN_STEP, ctypes.c_int, pointers)
        self._run = _bind(lib, abi.RUN_MODEL, ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p])
        self._set_lr = _bind(lib, abi.SET_LEARNING_RATE, None, [ctypes.c_void_p, ctypes.c_float])
        self._get_lr = _bind(lib, abi.LEARNING_RATE, ctypes.c_float, [ctypes.c_void_p])
        self._steps = _bind(lib, abi.STEPS_DONE, ctypes.c_int64, [ctypes.c_void_p])
        data = _bind(lib, abi.STATE_DATA, ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int])
        create = _bind(lib, abi.CREATE, ctypes.c_void_p, [ctypes.c_int])
        if None in (self._destroy, self._step, self._run, self._set_lr, self._get_lr, self._steps, data, create):
            raise LoadError(f"{path}: its metadata JSON describes a training library, but the training functions "
                            "are missing")
        if self._step_v is None and (len(self.inputs) != 1 or len(self.targets) != 1):
            raise LoadError(f"{path}: {abi.TRAIN_STEP_V} is missing, and the model has {len(self.inputs)} inputs and "
                            f"{len(self.targets)} outputs; rebuild it with `convc compile --train`")
        self._ctx = create(1)
        if not self._ctx:
            raise LoadError(f"{path}: convc_create failed (out of memory?)")
        # numpy views of the state inside the context (read/write), sized by the compiled code
        self._state: dict[str, np.ndarray] = {}
        for i, spec in enumerate(state):
            n = math.prod(spec.shape) * spec.dtype.itemsize
            address = data(self._ctx, i)
            if not address:
                raise LoadError(f"{path}: convc_state_data({i}) is NULL")
            buf = (ctypes.c_byte * n).from_address(address)
            self._state[spec.name] = np.frombuffer(buf, dtype=spec.dtype).reshape(spec.shape)
        _agrees(path, "the number of targets", len(self.outputs), len(self.targets))

    @staticmethod
    def _targets(lib: ctypes.CDLL, path: str, training: dict) -> tuple[list, list[str], list[float], list]:
        """Per output: its targets (IOSpec, from the compiled label table, checked against the JSON),
        loss, weight and the loss's ignore_index (None without). A library built before the table
        describes one output's labels."""
        from convc.load import _DTYPES, _agrees, _c_text, _check_specs, _compiled_specs, _need
        from convc.runtime import IOSpec
        items = training.get("targets")
        if items is None:  # one output: "labels" and "loss" only
            labels = training["labels"]
            shape = labels.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise LoadError(f"{path}: the labels' shape in its metadata JSON is malformed; rebuild it")
            n_labels = _need(lib, path, abi.LABELS_SIZE, ctypes.c_int64)()
            dtype = _c_text(_need(lib, path, abi.LABELS_DTYPE, ctypes.c_char_p)(), abi.LABELS_DTYPE, path)
            _agrees(path, "the labels' size", math.prod(shape), n_labels)
            _agrees(path, "the labels' dtype", labels.get("dtype"), dtype)
            if dtype not in _DTYPES:
                raise LoadError(f"{path}: labels of dtype {dtype!r}")
            return [IOSpec(str(labels.get("name", "labels")), tuple(shape), np.dtype(dtype))], [training["loss"]], \
                [1.0], [None]
        if not isinstance(items, list) or not all(
                isinstance(t, dict) and isinstance(t.get("loss"), str) and isinstance(t.get("weight"), (int, float))
                and isinstance(t.get("name"), str) for t in items):
            raise LoadError(f"{path}: the targets in its metadata JSON are malformed; rebuild it")
        specs = _compiled_specs(lib, path, abi.LABELS, "targets", [t["name"] for t in items])
        _check_specs(path, "target", items, specs)
        loss_of = _need(lib, path, abi.LABEL_LOSS, ctypes.c_char_p, [ctypes.c_int])
        weight_of = _need(lib, path, abi.LOSS_WEIGHT, ctypes.c_float, [ctypes.c_int])
        for j, t in enumerate(items):
            _agrees(path, f"the loss of output {j}", t["loss"], _c_text(loss_of(j), f"the loss of output {j}", path))
            _agrees(path, f"the loss weight of output {j}", float(np.float32(t["weight"])), float(weight_of(j)))
        ignore = [t["settings"].get("ignore_index") if isinstance(t.get("settings"), dict) else None for t in items]
        if not all(v is None or isinstance(v, int) for v in ignore):
            raise LoadError(f"{path}: an ignore_index in its metadata JSON is not an integer; rebuild it")
        return specs, [t["loss"] for t in items], [float(t["weight"]) for t in items], ignore

    def close(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._state = {}
            self._destroy(ctx)

    def __del__(self) -> None:
        self.close()

    @property
    def lr(self) -> float:
        return float(self._get_lr(self._ctx))

    @lr.setter
    def lr(self, value: float) -> None:
        if not np.isfinite(value) or value < 0:
            raise InputError(f"learning rate {value!r} must be a finite, non-negative number")
        self._set_lr(self._ctx, float(value))

    @property
    def steps_done(self) -> int:
        return int(self._steps(self._ctx))

    def _xs(self, x: Any) -> list[np.ndarray]:
        """Every input's array (float32, any batch), in input order (convc/train_batch.py's rules)."""
        from convc.train_batch import check_inputs
        return check_inputs(x, {s.name: s.shape for s in self.inputs})

    @property
    def batch(self) -> int:
        """The compiled batch: the most samples a step takes."""
        return self.inputs[0].shape[0]

    def _batch(self, x: Any, y: Any) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """(x, y) checked as the Trainer checks them, any batch of 1 up to the compiled one."""
        from convc.train_batch import check_target, per_output
        xs = self._xs(x)
        n, batch = xs[0].shape[0], self.batch
        if n > batch or (n != batch and self._step_n is None):
            most = f"at most {batch} samples" if self._step_n is not None else \
                f"batches of {batch} (it was built before batches could be smaller; rebuild it)"
            raise InputError(f"x has a batch of {n}; this library trains on {most} "
                             f"(its inputs: {[s.shape for s in self.inputs]})")
        ys = [check_target(t, n, (batch,) + out.shape[1:], spec.dtype.kind in "iu", ignore)
              for t, out, spec, ignore in
              zip(per_output(y, [o.name for o in self.outputs]), self.outputs, self.targets, self._ignore)]
        return xs, [np.ascontiguousarray(t, dtype=spec.dtype) for t, spec in zip(ys, self.targets)], n

    @staticmethod
    def _arrays(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[Any, Any]:
        return ((ctypes.c_void_p * len(xs))(*[a.ctypes.data for a in xs]),
                (ctypes.c_void_p * len(ys))(*[t.ctypes.data for t in ys]))

    def _check(self, rc: int, name: str, n: int) -> None:
        if rc == 4:  # _batch checked n: the library disagrees with its metadata
            raise InputError(f"{name} refused a batch of {n} (its compiled batch is {self.batch})")
        if rc == 6:  # check_target checked the labels: the library disagrees with its metadata
            raise InputError(f"{name} refused a class index outside the output's classes")
        if rc != 0:
            raise LoadError(f"{name} failed ({rc}{': out of memory' if rc == 5 else ''})")

    def step(self, x: Any, y: Any) -> float:
        """One training step on the batch (x, y), of any size up to the compiled batch (a smaller
        one trains as ``convc.Trainer`` trains it: the loss and BatchNorm count its samples only);
        returns the loss before the update (with several outputs, the weighted sum of their losses)."""
        from convc.train_results import TrainingError
        xs, ys, n = self._batch(x, y)
        loss = ctypes.c_float()
        before = self.steps_done
        if self._step_n is not None:
            name = abi.TRAIN_STEP_N
            rc = self._step_n(self._ctx, *self._arrays(xs, ys), n, ctypes.byref(loss))
        elif self._step_v is not None:
            name = abi.TRAIN_STEP_V
            rc = self._step_v(self._ctx, *self._arrays(xs, ys), ctypes.byref(loss))
        else:
            name = abi.TRAIN_STEP
            rc = self._step(self._ctx, xs[0].ctypes.data, ys[0].ctypes.data, ctypes.byref(loss))
        if rc == 2:
            raise TrainingError(f"step {before + 1}: the loss ({loss.value}) or a gradient is not finite; the "
                                "weights and optimizer state were not updated")
        self._check(rc, name, n)
        return float(loss.value)

    def compute_gradients(self, x: Any, y: Any, accumulate: bool = False) -> float:
        """Forward, loss and backward on (x, y), any batch up to the compiled one, into the
        library's gradient buffer (added to it with ``accumulate``); changes no weight. Returns the
        batch's loss. ``apply_gradients`` then updates, as ``convc.Trainer``'s two-call step."""
        if self._gradients_n is None:
            raise LoadError(f"{self.path}: {abi.COMPUTE_GRADIENTS_N} is missing; rebuild it with "
                            "`convc compile --train`")
        xs, ys, n = self._batch(x, y)
        loss = ctypes.c_float()
        self._check(self._gradients_n(self._ctx, *self._arrays(xs, ys), n, ctypes.byref(loss), int(bool(accumulate))),
                    abi.COMPUTE_GRADIENTS_N, n)
        return float(loss.value)

    def apply_gradients(self) -> None:
        """The optimizer update from the gradient buffer; TrainingError (nothing updated) when the
        loss or a gradient is not finite or no gradients were computed since the last update."""
        from convc.train_results import TrainingError
        if self._apply is None:
            raise LoadError(f"{self.path}: {abi.APPLY_GRADIENTS} is missing; rebuild it with `convc compile --train`")
        if self._apply(self._ctx) == 2:
            raise TrainingError(f"step {self.steps_done + 1}: nothing was applied (no gradients computed since the "
                                "last update, or the loss or a gradient is not finite)")

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The first output in eval mode for any number of samples (in chunks of the compiled batch,
        the last padded), as ``convc.Trainer.predict``; ``predict_all`` gives every output."""
        return self.predict_all(x)[0]

    def predict_all(self, x: Any) -> list[np.ndarray]:
        """Every output in eval mode for any number of samples, in output order."""
        from convc.train_batch import pad
        xs = self._xs(x)
        n, chunk = xs[0].shape[0], self.inputs[0].shape[0]
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, n, chunk):
            parts = [np.ascontiguousarray(pad(a[start:start + chunk], chunk)) for a in xs]
            outs = [np.empty(s.shape, s.dtype) for s in self.outputs]
            ins = (ctypes.c_void_p * len(parts))(*[p.ctypes.data for p in parts])
            outp = (ctypes.c_void_p * len(outs))(*[o.ctypes.data for o in outs])
            if self._run(self._ctx, ins, outp) != 0:
                raise LoadError(f"{abi.RUN_MODEL} failed")
            for k, o in enumerate(outs):
                results[k].append(o[:min(chunk, n - start)])
        return [np.concatenate(r) for r in results]

    __call__ = predict

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, running statistics, optimizer state and step counter."""
        skip = {self._training["lr_name"]}
        return {n: v.copy() for n, v in self._state.items() if n not in skip}

    def load_state_dict(self, state: Any) -> None:
        for n, v in state.items():
            if n not in self._state or n == self._training["lr_name"]:
                raise InputError(f"load_state_dict: unexpected {n!r}")
            v = np.asarray(v)
            if v.shape != self._state[n].shape:
                raise InputError(f"load_state_dict: {n!r} has shape {v.shape}, expected {self._state[n].shape}")
            self._state[n][...] = v

    def weights(self) -> dict[str, np.ndarray]:
        """The model's trained constants (parameters and running statistics)."""
        return {n: self._state[n].copy() for n in self._training["params"] + self._training["running"]}

    def __reduce__(self):
        raise TypeError("a training library's context cannot be pickled; send the library path and "
                        "state_dict() instead")

    def __repr__(self) -> str:
        return (f"<convc.load training library {Path(self.path).name}: {self._training['optimizer']}, "
                f"{', '.join(self.losses)}, batch {self.inputs[0].shape[0]}>")
