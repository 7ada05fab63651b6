"""A ``convc.Trainer``'s training state as arrays (``state_dict``, ``load_state_dict``,
``weights``) and as checkpoint files that resume bit-exactly (``save``, ``load_state``,
``Trainer.load``; the file format is convc/checkpoint.py's)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from convc import checkpoint
from convc.checkpoint import CheckpointError
from convc.errors import InputError
from convc.optim import Optimizer


class TrainingState:
    """``convc.Trainer``'s state and checkpoints (a mixin: it reads the Trainer's plan and state)."""

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
             threads: int | None = None, instrument: bool = False) -> Self:
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


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
