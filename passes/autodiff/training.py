"""The training step as one Graph and one Plan: forward (training mode) + loss + backward + updates.

``build_training(forward, loss=..., optimizer=...)`` turns an inference graph into the graph the
codegen compiles to a single native function:

1. the constants become training state: the weights and biases of Conv/Gemm/MatMul, BN scale and
   B and constant Add operands are PARAMETERs, BN mean/var are STATE (running statistics);
2. the forward is re-emitted in training mode: BatchNormalization normalizes with batch statistics
   (BatchNormTrain), Dropout drops (DropoutTrain, seeded by the step counter); fused epilogues are
   split back into ops so every op has its own gradient;
3. the loss reads the model's output (a final Softmax is folded into softmax cross-entropy);
4. ``backward`` appends the gradient ops (passes/autodiff/core.py);
5. with an optimizer: AllFinite(loss, gradients) -> ok; one update op per parameter; the running
   statistics update; the step counter increment. All of them run last, read ``ok`` and do nothing
   when it is 0, so a non-finite step leaves the training state as it was.

The native entry point takes, as its inputs, ``[x, labels, lr, step] + parameters + running
statistics + optimizer state``: the persistent training state lives in arrays the caller owns (the
Trainer), separate from the activation arena, and the updates write into them in place (the memory
plan gives each update output the buffer of the input it replaces). Without an optimizer the step
returns the loss and every parameter's gradient instead (``convc.gradcheck``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from convc.passes.autodiff.core import backward
from convc.passes.dce import eliminate_dead_code
from convc.passes.pipeline import TRAINING_STEP, Plan, pipeline
from convc.passes.training_state import LATE, UPDATES, detach_state, update_targets  # noqa: F401  (public here)

from convc.errors import GraphError
from convc.ir import Graph, Op, TensorKind
from convc.ops import NoAttrs, OpGroup, OpKind
from convc.ops.elementwise_grad import DropoutTrainAttrs
from convc.ops.epilogue import NO_EPILOGUE
from convc.ops.norm_grad import RunningUpdateAttrs
from convc.ops.loss import LossAttrs
from convc.ops.optim import SgdAttrs

_CE = (OpKind.SOFTMAX_CROSS_ENTROPY, OpKind.SOFTMAX_CROSS_ENTROPY_GRAD)
_PAIR, _BCE = (OpKind.MSE_LOSS, OpKind.MSE_LOSS_GRAD), (OpKind.BCE_LOSS, OpKind.BCE_LOSS_GRAD)
# loss name (PyTorch's, snake case) -> (op kind, gradient kind, form: convc/ops/loss.py)
LOSSES = {
    "cross_entropy": _CE + ("logits",), "mse": _PAIR + ("mse",), "bce": _BCE + ("probs",),
    "nll": _CE + ("log_probs",), "l1": _PAIR + ("l1",), "huber": _PAIR + ("huber",),
    "smooth_l1": _PAIR + ("smooth_l1",), "bce_with_logits": _BCE + ("logits",),
}
CLASS_LOSSES = ("cross_entropy", "nll")  # targets: class indices, or class probabilities (soft targets)
LOSS_KINDS = frozenset(k for rule in LOSSES.values() for k in rule[:2])

# (op kind, input position) -> role of a constant read there
WEIGHT, BIAS, NORM, RUNNING = "weight", "bias", "norm", "running"
ROLES: dict[tuple[OpKind, int], str] = {
    (OpKind.CONV, 1): WEIGHT, (OpKind.CONV, 2): BIAS,
    (OpKind.CONV_TRANSPOSE, 1): WEIGHT, (OpKind.CONV_TRANSPOSE, 2): BIAS,
    (OpKind.GEMM, 0): WEIGHT, (OpKind.GEMM, 1): WEIGHT, (OpKind.GEMM, 2): BIAS,
    (OpKind.MATMUL, 0): WEIGHT, (OpKind.MATMUL, 1): WEIGHT,
    (OpKind.BATCH_NORM, 1): NORM, (OpKind.BATCH_NORM, 2): NORM,
    (OpKind.BATCH_NORM, 3): RUNNING, (OpKind.BATCH_NORM, 4): RUNNING,
    (OpKind.ADD, 0): BIAS, (OpKind.ADD, 1): BIAS, (OpKind.SUM, 0): BIAS, (OpKind.SUM, 1): BIAS,
    (OpKind.PRELU, 1): BIAS,  # the slopes: a per-channel vector, like a bias not regularized by l2=
    # LayerNormalization's Scale and B (nn.LayerNorm.weight and bias), and a Mul by a constant vector: a layer
    # scale (ConvNeXt's gamma) or the per-channel scale of a GroupNorm; like BatchNorm's, not regularized by l2=
    (OpKind.LAYER_NORM, 1): NORM, (OpKind.LAYER_NORM, 2): BIAS, (OpKind.MUL, 0): NORM, (OpKind.MUL, 1): NORM,
}
# graph.metadata[DECLARED_ROLES]: the importer's word on some constants, over ROLES: a role, or None for a
# constant that is no parameter of the model (InstanceNormalization's scale from a Constant node, the all-ones
# scale of the LayerNormalization the importer builds it from)
DECLARED_ROLES = "parameter_roles"
_PRIORITY = {WEIGHT: 0, BIAS: 1, NORM: 2, RUNNING: 3}
ROLE_NAMES = (WEIGHT, BIAS, NORM)  # what a parameter group of convc.optim may name besides parameters


@dataclass
class TrainingStep:
    """The planned training step and the names the Trainer feeds and reads."""
    plan: Plan
    x: str
    labels: str
    rows: str                        # (1,) int64 input: the leading samples the loss counts (a padded batch)
    lr: str
    step: str
    loss: str
    logits: str                      # the model output the loss reads
    params: list[str]                # trainable tensors, in input order
    roles: dict[str, str]            # param or running stat -> weight / bias / norm / running
    running: list[str]               # BN running means and variances, in input order
    state: dict[str, list[str]] = field(default_factory=dict)  # param -> optimizer state tensors
    state_labels: dict[str, list[str]] = field(default_factory=dict)  # param -> state names (exp_avg, ...)
    grads: dict[str, str] = field(default_factory=dict)        # param -> its gradient tensor
    initial: dict[str, np.ndarray] = field(default_factory=dict)  # every state input -> initial value
    forward_ops: list[str] = field(default_factory=list)       # the model's ops, in training mode
    grad_norm: str | None = None     # clip_grad_norm: the global gradient norm (an output)
    max_norm: str | None = None      # clip_grad_norm: the (1,) float32 input of the clipping threshold
    extra_inputs: list[str] = field(default_factory=list)      # run-time (1,) inputs after the state
    lr_scales: dict[str, float] = field(default_factory=dict)  # parameter groups: lr input -> its scale of lr
    batch_statistics: bool = False   # BatchNorm normalizes with batch statistics (samples are not independent)
    output: str | None = None        # with_outputs: the model's output as the loss reads it, an output
    all_labels: list[str] = field(default_factory=list)  # several outputs: every output's targets input
    all_logits: list[str] = field(default_factory=list)  # and the tensor its loss reads
    model_inputs: list[str] = field(default_factory=list)  # every model input, x first (the others: extra inputs)

    def owner(self, op: Op) -> tuple[str, str]:
        """(layer, phase) of an op of the step: the forward op it belongs to (or "loss", "step") and
        one of forward, loss, backward, update. A view a pass added around an op (passes/conv1d.py's
        2-D forms of a 1-D window) belongs to that op."""
        name = self.graph.metadata.get("origin", {}).get(op.name, op.name)
        if name in self._forward_set:
            return name, "forward"
        if op.kind in LOSS_KINDS:
            return "loss", "loss"
        grad_of = self.graph.metadata.get("grad_of", {})
        if name in grad_of:
            return grad_of[name], "backward"
        if op.kind in UPDATES or op.kind is OpKind.BATCH_NORM_RUNNING_UPDATE:
            state = op.inputs[3] if op.kind in UPDATES else op.inputs[0]
            readers = [r.name for r in self.readers(state) if r.name in self._forward_set]
            return (readers[0] if readers else "step"), "update"
        return "step", "update" if op.kind in (OpKind.ALL_FINITE, OpKind.STEP_INCREMENT) else "backward"

    def _pass_view(self, op: Op | None) -> bool:
        return op is not None and op.kind is OpKind.RESHAPE and op.name in self.graph.metadata.get("origin", {})

    def readers(self, tensor: str) -> list[Op]:
        """The ops reading ``tensor``, through the Reshape views passes added (a 1-D conv reads its
        weight through its 2-D form)."""
        out = []
        for r in self.graph.consumers(tensor):
            out.extend(self.readers(r.outputs[0]) if self._pass_view(r) else [r])
        return out

    def unviewed(self, tensor: str) -> str:
        """The tensor that ``tensor``, the output of a Reshape view a pass added, shows in another
        shape (followed back through such views); else ``tensor`` itself."""
        producer = self.graph.producer(tensor)
        while self._pass_view(producer):
            tensor = producer.inputs[0]
            producer = self.graph.producer(tensor)
        return tensor

    @property
    def _forward_set(self) -> set[str]:
        return set(self.forward_ops)

    @property
    def graph(self) -> Graph:
        return self.plan.graph

    @property
    def inputs(self) -> list[str]:
        return list(self.plan.graph.inputs)


def classify_constants(g: Graph, trainable: set[str] | None = None) -> dict[str, str]:
    """Role of every float constant read at a trainable position (the strongest role wins). A 0-d
    constant is a Python number of the exported code (GELU's 0.5, ``x + 1``), never a parameter."""
    roles: dict[str, str] = {}
    declared = g.metadata.get(DECLARED_ROLES, {})
    for op in g.ops():
        for i, t in enumerate(op.inputs):
            role = declared[t] if t in declared else ROLES.get((op.kind, i))
            tensor = g.tensor(t)
            if role is None or tensor.kind is not TensorKind.CONSTANT or tensor.dtype.kind != "f" or not tensor.shape:
                continue
            if trainable is not None and role != RUNNING and t not in trainable:
                continue
            if t not in roles or _PRIORITY[role] < _PRIORITY[roles[t]]:
                roles[t] = role
    return roles


def _unfused(tg: Graph, op: Op, outputs: tuple[str, ...]) -> None:
    """Re-emit a Conv/Gemm whose epilogue was fused as the op, then Add, then the activation."""
    epi = op.attrs.epilogue
    inputs = op.inputs[:-1] if epi.residual else op.inputs
    y = tg.add_op(op.kind, dataclasses.replace(op.attrs, epilogue=NO_EPILOGUE), inputs, name=op.name).outputs[0]
    if epi.residual:
        last = [outputs[0]] if epi.activation is None else None
        y = tg.add_op(OpKind.ADD, NoAttrs(), [y, op.inputs[-1]], last, name=f"{op.name}.residual").outputs[0]
    if epi.activation is not None:
        tg.add_op(epi.activation, epi.activation_attrs, [y], [outputs[0]], name=f"{op.name}.{epi.activation.value}")


def training_forward(forward: Graph, roles: dict[str, str], seed: int, x_name: str,
                     freeze_bn: bool = False) -> tuple[Graph, dict]:
    """The forward graph in training mode, with the constants turned into parameters and state.
    Returns it and, per BatchNormTrain op, (running mean, running var, batch mean, batch invstd).
    ``freeze_bn`` keeps BatchNormalization in its inference form (running statistics read, never
    updated; scale and B still train): fine-tuning with frozen BatchNorm."""
    tg = Graph(forward.name, metadata=dict(forward.metadata))
    for name in [x_name] + [n for n in forward.inputs if n != x_name]:  # every model input
        xt = forward.tensor(name)
        tg.add_tensor(name, xt.shape, xt.dtype, TensorKind.INPUT)
    step = tg.add_tensor("step", (1,), np.int64, TensorKind.STATE, np.zeros(1, dtype=np.int64))
    for t in forward.tensors():
        if t.kind is not TensorKind.CONSTANT:
            continue
        role = roles.get(t.name)
        kind = TensorKind.CONSTANT if role is None else TensorKind.STATE if role == RUNNING else TensorKind.PARAMETER
        tg.add_constant(t.name, t.data, kind)
    bn_stats = {}
    n_dropout = 0
    rows = None
    for op in forward.ops():
        if op.kind is OpKind.BATCH_NORM and freeze_bn:
            tg.add_op(op.kind, op.attrs, op.inputs, list(op.outputs), name=op.name)
        elif op.kind is OpKind.BATCH_NORM:
            x, scale, bias, mean, var = op.inputs
            y = op.outputs[0]
            if rows is None:  # the samples that are the batch: the loss's rows input, shared
                rows = tg.fresh_name("rows")
                while forward.has_tensor(rows):  # a model tensor added to tg later
                    rows = tg.fresh_name(f"{rows}_")
                rows = tg.add_tensor(rows, (1,), np.int64, TensorKind.INPUT).name
            tg.add_op(OpKind.BATCH_NORM_TRAIN, op.attrs, [x, scale, bias, rows],
                      [y, tg.fresh_name(f"{y}.batch_mean"), tg.fresh_name(f"{y}.batch_invstd")], name=op.name)
            if roles.get(mean) != RUNNING or roles.get(var) != RUNNING:
                raise GraphError(f"node {op.name!r}: BatchNormalization needs constant running mean and var to train")
            bn_op = tg.op(op.name)
            bn_stats[op.name] = (mean, var, bn_op.outputs[1], bn_op.outputs[2])
        elif op.kind is OpKind.DROPOUT:
            tg.add_op(OpKind.DROPOUT_TRAIN, DropoutTrainAttrs(op.attrs.ratio, seed, n_dropout), [op.inputs[0], step.name],
                      list(op.outputs), name=op.name)
            n_dropout += 1
        elif op.kind in OpGroup.EPILOGUE and not op.attrs.epilogue.empty:
            _unfused(tg, op, op.outputs)
        else:
            tg.add_op(op.kind, op.attrs, op.inputs, list(op.outputs), name=op.name)
    return tg, bn_stats


def attach_loss(tg: Graph, output: str, loss: str, attrs: LossAttrs | None = None, soft_targets: bool = False,
                rows: str | None = None, name: str = "loss_fn") -> tuple[str, str, str, str, str]:
    """Add the targets and rows inputs and the loss. Returns (labels, rows, loss, logits, saved)
    where ``saved`` is what the loss gradient reads besides the targets (the softmax for the
    class losses, else the logits). A model ending in Softmax (cross_entropy) or LogSoftmax (nll)
    over its classes gives the loss its input: softmax cross-entropy on logits, computed stably.
    ``rows``: an existing rows input to share (several outputs' losses); ``name``: the loss op's."""
    if loss not in LOSSES:
        raise GraphError(f"unknown loss {loss!r}; convc has {sorted(LOSSES)}")
    fwd_kind, _, form = LOSSES[loss]
    attrs = dataclasses.replace(attrs or LossAttrs(), form=form)
    out = tg.tensor(output)
    logits = output
    producer = tg.producer(output)
    if rows is None:
        rows = tg.add_tensor(tg.fresh_name("rows"), (1,), np.int64, TensorKind.INPUT).name
    if loss in CLASS_LOSSES:
        if len(out.shape) != 2:
            raise GraphError(f"{loss} needs a model output of shape (N, classes), got {out.shape}")
        folds = OpKind.SOFTMAX if loss == "cross_entropy" else OpKind.LOG_SOFTMAX
        if producer is not None and producer.kind is folds and producer.attrs.axis in (1, -1):
            logits = producer.inputs[0]  # take the logits, fuse the (log-)softmax into the loss
            attrs = dataclasses.replace(attrs, form="logits")
        shape, dtype = (out.shape, out.dtype) if soft_targets else (out.shape[:1], np.int64)
        labels = tg.add_tensor(tg.fresh_name("labels"), shape, dtype, TensorKind.INPUT).name
        op = tg.add_op(fwd_kind, attrs, [logits, labels, rows], [tg.fresh_name("loss"), tg.fresh_name("probs")],
                       name=name)
        saved = op.outputs[1] if attrs.form == "logits" else logits
        return labels, rows, op.outputs[0], logits, saved
    labels = tg.add_tensor(tg.fresh_name("targets"), out.shape, out.dtype, TensorKind.INPUT).name
    op = tg.add_op(fwd_kind, attrs, [logits, labels, rows], [tg.fresh_name("loss")], name=name)
    return labels, rows, op.outputs[0], logits, logits


def _heads(forward: Graph, loss, loss_attrs, soft_targets, loss_weights) -> list[tuple]:
    """(output, loss name, attrs, soft targets, weight) per model output: one loss per output."""
    k = len(forward.outputs)
    per_output = not isinstance(loss, str)
    names = list(loss) if per_output else [loss]
    if len(names) != k:
        raise GraphError(f"{forward.name!r} has {k} outputs {forward.outputs}: give one loss per output "
                         f"({len(names)} given)")
    attrs = list(loss_attrs) if per_output and loss_attrs is not None else [loss_attrs] * k
    soft = list(soft_targets) if per_output and not isinstance(soft_targets, bool) else [bool(soft_targets)] * k
    weights = [1.0] * k if loss_weights is None else [float(w) for w in loss_weights]
    if len(attrs) != k or len(soft) != k or len(weights) != k:
        raise GraphError(f"{k} outputs: give one loss option, soft-target flag and weight per output")
    return list(zip(forward.outputs, names, attrs, soft, weights))


def _differentiated(forward: Graph, loss, seed: int, trainable: set[str] | None, loss_attrs, soft_targets,
                    freeze_bn: bool, loss_weights=None) -> tuple[Graph, TrainingStep, dict]:
    """The forward in training mode, the loss and the backward pass; the step's names (unplanned).
    A model with several outputs has a loss per output (``loss`` and the options are sequences),
    and trains on their sum weighted by ``loss_weights``."""
    heads = _heads(forward, loss, loss_attrs, soft_targets, loss_weights)
    x_name = forward.inputs[0]
    roles = classify_constants(forward, trainable)
    tg, bn_stats = training_forward(forward, roles, seed, x_name, freeze_bn)
    rows = next((tg.op(bn).inputs[3] for bn in bn_stats), None)  # BatchNorm's rows, also the losses'
    attached = []
    for k, (output, name, attrs, soft, _) in enumerate(heads):
        fn = "loss_fn" if k == 0 else f"loss_fn.{k}"
        labels, rows, loss_k, logits, saved = attach_loss(tg, output, name, attrs, soft, rows, fn)
        attached.append((fn, name, labels, loss_k, logits, saved))
    loss_name = attached[0][3]
    weighting: list[str] = []
    if len(heads) > 1:  # the weighted sum of the outputs' losses
        terms = []
        for (fn, _, _, loss_k, _, _), (_, _, _, _, w) in zip(attached, heads):
            if w != 1.0:
                c = tg.add_constant(tg.fresh_name(f"{fn}.weight"), np.array([w], np.float32)).name
                loss_k = tg.add_op(OpKind.MUL, NoAttrs(), [loss_k, c], name=f"{fn}.weighted").outputs[0]
                weighting.append(f"{fn}.weighted")
            terms.append(loss_k)
        loss_name = tg.add_op(OpKind.SUM, NoAttrs(), terms, [tg.fresh_name("loss")], name="loss_sum").outputs[0]
        weighting.append("loss_sum")
    lr = tg.add_tensor("lr", (1,), np.float32, TensorKind.INPUT).name
    tg.outputs = [loss_name]
    eliminate_dead_code(tg)  # a Softmax the loss absorbed
    not_forward = {a[0] for a in attached} | set(weighting)
    forward_ops = [op.name for op in tg.ops() if op.name not in not_forward]
    seeds = {}
    for (fn, name, labels, _, logits, saved), (_, _, _, _, w) in zip(attached, heads):
        d = tg.add_op(LOSSES[name][1], tg.op(fn).attrs, [saved, labels, rows], name=f"{fn}.grad").outputs[0]
        if w != 1.0:
            c = tg.add_constant(tg.fresh_name(f"{fn}.grad_weight"), np.array([w], np.float32)).name
            d = tg.add_op(OpKind.MUL, NoAttrs(), [d, c], name=f"{fn}.grad.weighted").outputs[0]
        seeds[logits] = d
    labels, logits = attached[0][2], attached[0][4]
    params = [t for t in roles if roles[t] != RUNNING and tg.has_tensor(t) and tg.consumers(t)]
    grads = backward(tg, seeds, params)
    missing = [p for p in params if p not in grads]
    params = [p for p in params if p in grads]  # a parameter the loss does not depend on stays constant
    for p in missing:
        tg.tensor(p).kind = TensorKind.CONSTANT
    running = [t for stats in bn_stats.values() for t in stats[:2]]
    running += [t for t in roles if roles[t] == RUNNING and t not in running and tg.consumers(t)]  # frozen BN
    step = TrainingStep(Plan(tg, [], None), x_name, labels, rows, lr, "step", loss_name, logits, params,
                        {t: roles[t] for t in params + running}, running, grads=dict(grads), forward_ops=forward_ops)
    step.initial[rows] = np.array([tg.tensor(x_name).shape[0]], np.int64)  # every sample counts
    step.batch_statistics = bool(bn_stats)
    step.all_labels, step.all_logits = [a[2] for a in attached], [a[4] for a in attached]
    step.model_inputs = list(forward.inputs)
    # the other outputs' targets and the other inputs are fed like the first's
    step.extra_inputs += [rows] + step.all_labels[1:] + step.model_inputs[1:]
    return tg, step, bn_stats


def build_training(forward: Graph, *, loss: str, optimizer: Any = None, seed: int = 0, l1: float = 0.0,
                   l2: float = 0.0, regularize_all: bool = False, trainable: set[str] | None = None,
                   clip_grad_norm: bool = False, loss_attrs: LossAttrs | None = None,
                   soft_targets: bool = False, freeze_bn: bool = False, with_outputs: bool = False,
                   loss_weights=None) -> TrainingStep:
    """Plan the training step of ``forward`` (batch fixed; several inputs: the first is ``step.x``,
    the others extra inputs fed alike, ``step.model_inputs`` lists them all).

    ``optimizer`` is a ``convc.optim`` optimizer; None builds the gradient step (outputs: the loss,
    then every parameter's gradient). ``l1``/``l2`` regularize the weights (every parameter with
    ``regularize_all``). ``trainable`` restricts which constants train (default: all of them).
    ``clip_grad_norm`` (with an optimizer) scales the gradients by ``min(1, max_norm / (norm +
    1e-6))`` before the updates, PyTorch's ``clip_grad_norm_``: ``norm`` is the global L2 norm of
    every gradient, a second output of the step, and ``max_norm`` an input read at run time.
    ``loss_attrs``: the loss's options (convc/ops/loss.py); ``soft_targets``: a class loss reads
    class probabilities. The run-time input ``rows`` (an extra input, initially the batch) is how
    many leading samples the loss counts. ``freeze_bn``: see ``training_forward``. ``with_outputs``
    (with an optimizer): the tensor the loss reads is the step's last output, ``step.output``."""
    tg, step, bn_stats = _differentiated(forward, loss, seed, trainable, loss_attrs, soft_targets, freeze_bn,
                                         loss_weights)
    if optimizer is None:
        tg.outputs = [step.loss] + [step.grads[p] for p in step.params]
    else:
        _append_updates(tg, step, optimizer, bn_stats, l1, l2, regularize_all, clip_grad_norm)
        if with_outputs:
            step.output = step.logits
            tg.outputs = list(tg.outputs) + step.all_logits
    tg.inputs = [step.x, step.labels, step.lr, "step"] + step.params + step.running + \
        [s for p in step.params for s in step.state.get(p, [])]
    for name in tg.inputs[3:]:
        step.initial[name] = tg.tensor(name).data
    tg.inputs += step.extra_inputs  # run-time scalars the caller sets (max_norm, the lr of a parameter group)
    step.plan = pipeline(tg, variant=TRAINING_STEP)  # the state read at run time, the updates last and in place
    return step


@dataclass
class SplitStep:
    """The training step in two native calls around one gradient buffer (``Trainer.compute_gradients``
    and ``apply_gradients``), so that something can act on the gradients in between (an allreduce
    across replicas, the sum of micro-batches).

    ``compute`` runs the forward, the loss and the backward pass and ADDS every parameter's gradient
    into its buffer (the caller zeroes the buffers to start a new sum); it also copies each
    BatchNorm's batch mean and inverse std into ``saved`` buffers (zeroed by the caller before
    every call, so they hold the last batch's). Inputs: ``[x, labels, step] + params + running
    statistics it reads (frozen BatchNorm) + buffers + saved + [rows]``; outputs: the loss (and
    with ``with_outputs`` the model's output).

    ``apply`` is the fused step's tail, the same ops in the same order on the same names, except
    that it reads the gradients and batch statistics from those buffers and the loss from an
    input: finite check (of the loss and the buffers), clipping, the optimizer updates, the
    running-statistics update and the step counter. Inputs: ``[loss, lr, step] + params + running
    + optimizer state + buffers + saved + extra inputs``; outputs: ``ok`` (1.0 when applied), then
    the gradient norm with clipping. Parameter, state and input names are the fused step's."""
    names: TrainingStep               # the fused step's names (params, state, lr, extra inputs, ...)
    compute: Plan
    apply: Plan
    buffers: dict[str, str]           # parameter -> its gradient buffer (an input of both plans)
    saved: list[str]                  # BatchNorm batch statistics copied for the running update
    ok: str
    grad_norm: str | None = None


# The gradient buffers are written with an SGD update of learning rate -1, always applied:
# buffer - (-1) * g is buffer + g exactly, in place over the buffer (passes/training_state.py).
_ACCUMULATE_LR, _ALWAYS = np.array([-1.0], np.float32), np.array([1.0], np.float32)


def build_split(forward: Graph, *, loss: str, optimizer: Any, seed: int = 0, l1: float = 0.0, l2: float = 0.0,
                regularize_all: bool = False, trainable: set[str] | None = None, clip_grad_norm: bool = False,
                loss_attrs: LossAttrs | None = None, soft_targets: bool = False, freeze_bn: bool = False,
                with_outputs: bool = False, loss_weights=None) -> SplitStep:
    """Plan ``build_training``'s step as two steps around a gradient buffer (see ``SplitStep``)."""
    tg, step, bn_stats = _differentiated(forward, loss, seed, trainable, loss_attrs, soft_targets, freeze_bn,
                                         loss_weights)
    cg = tg.copy()
    before = {op.name for op in tg.ops()}
    _append_updates(tg, step, optimizer, bn_stats, l1, l2, regularize_all, clip_grad_norm)
    late = [op for op in tg.ops() if op.name not in before]
    used: set[str] = set()

    def fresh(base: str) -> str:
        name = tg.fresh_name(base)
        while name in used:
            name = tg.fresh_name(f"{name}_")
        used.add(name)
        return name

    buffers = {p: fresh(f"{p}.grad_buffer") for p in step.params}
    stats = [t for s in bn_stats.values() for t in s[2:]]
    saved = {t: fresh(f"{t}.saved") for t in stats}
    into = {step.grads[p]: buffers[p] for p in step.params} | saved  # tensor -> the buffer it is added to

    # compute: forward, loss, backward, then buffer += tensor for every gradient and batch statistic
    cg.outputs = [step.loss] + list(into)
    eliminate_dead_code(cg)
    for t in [step.lr] + step.running:
        if not cg.consumers(t):  # frozen BatchNorm reads its running statistics in the forward
            cg.remove_tensor(t)
    neg_one = cg.add_constant(cg.fresh_name("accumulate.lr"), _ACCUMULATE_LR).name
    always = cg.add_constant(cg.fresh_name("accumulate.ok"), _ALWAYS).name
    for t, buf in into.items():
        src = cg.tensor(t)
        cg.add_constant(buf, np.zeros(src.shape, src.dtype), TensorKind.STATE)
        cg.add_op(OpKind.SGD_UPDATE, SgdAttrs(), [neg_one, step.step, always, buf, t], [cg.fresh_name(f"{buf}.new")],
                  name=cg.fresh_name(f"{buf}.accumulate"))
    cg.outputs = [step.loss]
    if with_outputs:
        step.output = step.logits
        cg.outputs += step.all_logits
    cg.inputs = [step.x, step.labels, step.step] + step.params + [r for r in step.running if cg.has_tensor(r)] + \
        list(into.values()) + [step.rows] + step.all_labels[1:] + step.model_inputs[1:]

    # apply: the fused step's tail on the buffers
    ag = Graph(f"{forward.name}.apply", metadata=dict(tg.metadata))
    produced = {o for op in late for o in op.outputs}
    for op in late:
        for t in op.inputs:
            name = into.get(t, t)
            if t in produced or ag.has_tensor(name):
                continue
            src = tg.tensor(t)
            if t in into:
                ag.add_constant(name, np.zeros(src.shape, src.dtype), TensorKind.STATE)
            elif t == step.loss:
                ag.add_tensor(t, src.shape, src.dtype, TensorKind.INPUT)
            else:
                ag.add_tensor(t, src.shape, src.dtype, src.kind, src.data)
        ag.add_op(op.kind, op.attrs, [into.get(t, t) for t in op.inputs], list(op.outputs), name=op.name)
    ok = next(op.outputs[0] for op in late if op.kind is OpKind.ALL_FINITE)
    ag.outputs = [ok] + ([step.grad_norm] if step.grad_norm is not None else [])
    ag.inputs = [step.loss, step.lr, step.step] + step.params + [r for r in step.running if ag.has_tensor(r)] + \
        [s for p in step.params for s in step.state.get(p, [])] + list(into.values()) + \
        [n for n in step.extra_inputs if ag.has_tensor(n)]
    for name in [step.step] + step.params + step.running + [s for p in step.params for s in step.state.get(p, [])]:
        step.initial[name] = tg.tensor(name).data
    return SplitStep(step, pipeline(cg, variant=TRAINING_STEP), pipeline(ag, variant=TRAINING_STEP), buffers,
                     list(saved.values()), ok, step.grad_norm)


def eval_graph(forward: Graph, roles: dict[str, str]) -> Graph:
    """The inference graph on the training state (``pipeline(..., variant=EVAL_ON_STATE)`` plans
    it): the parameters and running statistics of ``roles`` become inputs read at run time, so
    the compiled forward follows the training without recompiling."""
    g = forward.copy()
    state = [n for n in roles if g.has_tensor(n)]
    for n in state:
        g.tensor(n).kind = TensorKind.STATE if roles[n] == RUNNING else TensorKind.PARAMETER
    g.inputs = list(g.inputs) + state
    return g


def _clip_gradients(tg: Graph, step: TrainingStep) -> dict[str, str]:
    """Gradients scaled by ``min(1, max_norm / (||g|| + 1e-6))``, ``||g||`` over all of them."""
    from convc.ops.reduce import ReduceAttrs
    step.max_norm = tg.add_tensor(tg.fresh_name("max_grad_norm"), (1,), np.float32, TensorKind.INPUT).name
    step.extra_inputs.append(step.max_norm)
    squares = []
    for p in step.params:
        g = step.grads[p]
        sq = tg.add_op(OpKind.MUL, NoAttrs(), [g, g], [tg.fresh_name(f"{g}.sq")], name=f"{p}.clip.sq").outputs[0]
        axes = tuple(range(len(tg.tensor(g).shape)))
        squares.append(tg.add_op(OpKind.REDUCE_SUM, ReduceAttrs(axes, (1,)), [sq], [tg.fresh_name(f"{g}.sumsq")],
                                 name=f"{p}.clip.sum").outputs[0])
    total = squares[0] if len(squares) == 1 else \
        tg.add_op(OpKind.SUM, NoAttrs(), squares, [tg.fresh_name("grad_sumsq")], name="clip.total").outputs[0]
    norm = tg.add_op(OpKind.SQRT, NoAttrs(), [total], [tg.fresh_name("grad_norm")], name="clip.norm").outputs[0]
    eps = tg.add_constant(tg.fresh_name("clip.eps"), np.array([1e-6], np.float32)).name
    one = tg.add_constant(tg.fresh_name("clip.one"), np.array([1.0], np.float32)).name
    denom = tg.add_op(OpKind.ADD, NoAttrs(), [norm, eps], name="clip.denom").outputs[0]
    coef = tg.add_op(OpKind.DIV, NoAttrs(), [step.max_norm, denom], name="clip.coef").outputs[0]
    coef = tg.add_op(OpKind.MIN, NoAttrs(), [coef, one], name="clip.clamped").outputs[0]
    step.grad_norm = norm
    tg.outputs = list(tg.outputs) + [norm]
    return {p: tg.add_op(OpKind.MUL, NoAttrs(), [step.grads[p], coef], [tg.fresh_name(f"{step.grads[p]}.clipped")],
                         name=f"{p}.clip").outputs[0] for p in step.params}


def _append_updates(tg: Graph, step: TrainingStep, optimizer: Any, bn_stats: dict, l1: float, l2: float,
                    regularize_all: bool, clip_grad_norm: bool = False) -> None:
    ok = tg.add_op(OpKind.ALL_FINITE, NoAttrs(), [step.loss] + [step.grads[p] for p in step.params],
                   [tg.fresh_name("ok")], name="all_finite").outputs[0]
    grads = _clip_gradients(tg, step) if clip_grad_norm and step.params else step.grads
    listed = {n for g in getattr(optimizer, "groups", []) for n in g["params"]} - set(ROLE_NAMES)
    if listed - set(step.params):
        raise GraphError(f"parameter groups name {sorted(listed - set(step.params))}, which are not trainable "
                         f"parameters of the model (it has {step.params[:8]}{' ...' if len(step.params) > 8 else ''})")
    group_lrs: dict[float, str] = {}
    for p in step.params:
        regularize = regularize_all or step.roles[p] == WEIGHT
        opt, scale = optimizer.for_param(p, step.roles[p]) if hasattr(optimizer, "for_param") else (optimizer, 1.0)
        kind, attrs = opt.update(l1 if regularize else 0.0, l2 if regularize else 0.0)
        lr = step.lr
        if scale != 1.0:  # the group's learning rate: another run-time input, scale * lr
            if scale not in group_lrs:
                group_lrs[scale] = tg.add_tensor(tg.fresh_name(f"lr.x{scale:g}"), (1,), np.float32,
                                                 TensorKind.INPUT).name
                step.extra_inputs.append(group_lrs[scale])
                step.lr_scales[group_lrs[scale]] = scale
            lr = group_lrs[scale]
        x = tg.tensor(p)
        state = []
        for label, init in zip(optimizer.state_labels(attrs), optimizer.initial_state(x.data, attrs)):
            state.append(tg.add_constant(tg.fresh_name(f"{p}.{label}"), init, TensorKind.STATE).name)
        step.state[p] = state
        step.state_labels[p] = optimizer.state_labels(attrs)
        outs = [tg.fresh_name(f"{p}.new")] + [tg.fresh_name(f"{s}.new") for s in state]
        tg.add_op(kind, attrs, [lr, step.step, ok, p, grads[p]] + state, outs, name=f"{p}.update")
    for bn, (mean, var, bmean, binvstd) in bn_stats.items():
        bn_op = tg.op(bn)
        x = tg.tensor(bn_op.inputs[0])
        attrs = RunningUpdateAttrs(bn_op.attrs.momentum, bn_op.attrs.epsilon, x.size // x.shape[1],
                                   per_sample=x.size // (x.shape[0] * x.shape[1]))
        tg.add_op(OpKind.BATCH_NORM_RUNNING_UPDATE, attrs, [mean, var, bmean, binvstd, ok] + list(bn_op.inputs[3:]),
                  [tg.fresh_name(f"{mean}.new"), tg.fresh_name(f"{var}.new")], name=f"{bn}.running_update")
    tg.add_op(OpKind.STEP_INCREMENT, NoAttrs(), [step.step, ok], [tg.fresh_name("step.new")], name="step_increment")
