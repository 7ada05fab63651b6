"""``convc compile MODEL.onnx``: a shared library (or object file) with the weights embedded, and its C header."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convc.cli.common import (EXIT_OK, Command, Progress, add_input_shape_flag, add_precision_flag, add_winograd_flag,
                              check_output_file, input_shapes, load_onnx, mb, numeric_options, positive)
from convc.errors import ConvcError, InputError

DESCRIPTION = (
    "Compile MODEL.onnx ahead of time to a shared library with the weights embedded, plus a C header "
    "declaring its C ABI (create/destroy a context, run, metadata queries, CPU check). The library "
    "depends only on libc, libm and pthreads; load it from Python with convc.load('model.so') (no "
    "llvmlite needed) or link it into a C program (see examples/c). An output ending in .o writes the "
    "object file only (no C toolchain needed).")


def _target(text: str) -> str:
    from convc.codegen.target import resolve_target
    try:
        resolve_target(text)
    except ConvcError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    from convc.codegen.target import TARGET_NAMES
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to compile")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="the library to write (default: MODEL.so); FILE.o writes the object file only")
    p.add_argument("--batch", type=positive, metavar="N",
                   help="fix a symbolic batch dimension to N (default: 1); the library's shapes are fixed")
    add_input_shape_flag(p)
    p.add_argument("--target", type=_target, default="native", metavar="TARGET",
                   help=f"the CPU to compile for: {', '.join(TARGET_NAMES)} (default: native = this CPU, every "
                        "feature it has); extra required features may follow: x86-64-v3,+avx512f")
    p.add_argument("--threads", "-t", type=positive, metavar="N",
                   help="the most worker threads a context may use (default: this machine's cores)")
    add_winograd_flag(p)
    add_precision_flag(p)
    p.add_argument("--header", metavar="FILE.h", help="where to write the C header (default: the output with .h)")
    from convc.optim import OPTIMIZERS
    train = p.add_argument_group("training artifact")
    train.add_argument("--train", action="store_true",
                       help="build a training library: adds convc_train_step (forward, loss, backward, update in "
                            "one call) and a training state the context owns; --batch is the training batch, "
                            "the most samples a step takes (convc_train_step_n steps fewer)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="with --train (default: adam)")
    train.add_argument("--lr", type=float, metavar="LR", help="with --train: initial learning rate (default: the "
                                                               "optimizer's)")
    train.add_argument("--loss", action="append", metavar="[OUTPUT=]NAME[:KEY=VALUE,...]", help=_loss_help())
    train.add_argument("--loss-weight", type=float, action="append", dest="loss_weight", metavar="W",
                       help="with --train and several outputs: one per --loss, the weights of the losses' sum "
                            "(default: 1 each; or weight=W in --loss)")
    train.add_argument("--seed", type=int, help="with --train: seed of Dropout's generator (default: 0)")


def refuse_conflicts(args: argparse.Namespace) -> None:
    """Flags that cannot apply together are refused before any work, never silently ignored."""
    if args.train:
        if args.threads is not None:
            raise ConvcError("--threads is not available with --train: the training step runs on the calling thread")
        if not args.winograd:
            raise ConvcError("--no-winograd is not available with --train: training never runs Winograd convs")
        if args.precision not in (None, "float32"):
            raise ConvcError(f"--precision {args.precision} is not available with --train: training runs float32")
        if args.input_shapes:
            raise ConvcError("--input-shape is not available with --train: a training library's input shape is "
                             "the model's, with --batch")
        return
    for flag in ("optimizer", "lr", "loss", "seed", "loss_weight"):
        if getattr(args, flag) is not None:
            raise ConvcError(f"--{flag.replace('_', '-')} applies to a training library: add --train")


def _options(settings) -> str:
    """A loss's options that differ from the defaults, as `` (label_smoothing=0.1, ...)``."""
    if not isinstance(settings, dict):
        return ""
    from dataclasses import asdict

    from convc.losses import Loss
    default = asdict(Loss(settings.get("name", "cross_entropy")))
    changed = [f"{k}={v}" for k, v in settings.items() if k != "name" and v != default.get(k)]
    return f" ({', '.join(changed)})" if changed else ""


def run(args: argparse.Namespace) -> int:
    from convc.compiler import build
    from convc.codegen.target import checkable
    progress = Progress(args.quiet)
    refuse_conflicts(args)
    out = args.output or str(Path(Path(args.model).name).with_suffix(".so"))
    # before compiling: a missing or read-only directory must not cost a whole build (build() would
    # also create missing directories, hiding a typo); the header's default sits beside the output
    check_output_file(out, "--output")
    check_output_file(args.header or Path(out).with_suffix(".h"), "--header")
    model = load_onnx(args.model)
    if args.train:
        from convc.compiler import build_training_library
        losses, weights = parse_losses(args.loss or ["cross_entropy"], [o.name for o in model.graph.output],
                                       args.loss_weight)
        result = build_training_library(model, out, batch=args.batch, optimizer=args.optimizer or "adam",
                                        lr=args.lr, loss=losses, seed=args.seed or 0, target=args.target,
                                        progress=progress, header=args.header, loss_weights=weights)
    else:
        result = build(model, out, batch=args.batch, target=args.target, threads=args.threads, progress=progress,
                       header=args.header, input_shapes=input_shapes(args), **numeric_options(args))
    progress(f"built {result.output.name} in {result.seconds:.1f}s")
    meta = result.meta
    kind = "object file" if result.object_only else "shared library"
    print(f"wrote {result.output} ({kind}, {mb(result.size)}; weights {mb(result.weights_bytes)}) for "
          f"{result.target.name} ({result.target.triple}, cpu {result.target.cpu}), up to {meta['threads']} thread(s)")
    print(f"wrote {result.header} (the C ABI: convc_create, convc_run_model, convc_destroy, metadata queries)")
    for kind_, specs in (("input ", meta["inputs"]), ("output", meta["outputs"])):
        for s in specs:
            print(f"  {kind_} {s['name']!r}: {s['dtype']} {s['shape']}")
    if "training" in meta:
        tr = meta["training"]
        targets = tr.get("targets") or [{**tr["labels"], "loss": tr["loss"], "weight": 1.0}]
        heads = "; ".join(f"{t['loss']} loss" + _options(t.get("settings")) +
                          (f" x {t['weight']:g}" if t["weight"] != 1 else "") +
                          f", labels {t['dtype']} {t['shape']}" for t in targets)
        print(f"  training: {tr['optimizer']} (lr {tr['lr']:g}), {heads}, {len(tr['params'])} parameter tensors; "
              "convc_train_step_v in the header")
    _, unchecked = checkable(result.target)
    feats = ", ".join(result.target.required)
    print(f"  requires CPU features: {feats if len(feats) < 200 else feats[:200] + ' ...'}")
    if unchecked:
        print(f"  (convc_check_cpu cannot verify: {', '.join(unchecked)})")
    if result.object_only:
        print(f"link it with: cc -shared -o {result.output.with_suffix('.so').name} {result.output.name} -lm -lpthread")
    else:
        print(f"use it from Python with convc.load({str(result.output)!r}), or from C: see examples/c")
    return EXIT_OK


# --- --loss [OUTPUT=]NAME[:KEY=VALUE,...] ------------------------------------------------------------------
# A loss with its options as text, one per model output:
#     --loss cross_entropy:label_smoothing=0.1,ignore_index=-1
#     --loss classes=cross_entropy:class_weight=1/2/0.5 --loss values=huber:delta=0.5,weight=0.5
# Every key is an option of convc.Loss (convc/losses.py checks which loss takes which) except
# ``weight``, this output's weight in the sum of the losses (as --loss-weight), and ``reduction``,
# which convc has as ``mean`` only. ``class_weight`` is convc.Loss's ``weight`` (PyTorch's
# CrossEntropyLoss(weight=...)), its values separated by ``/``. Without ``OUTPUT=`` the losses follow
# the model's output order; with it, every output is named once (output names are the model's data,
# and may hold ``=`` or ``:``: the longest output name that prefixes the text is the one it names).
# key -> (what its value is, for messages)
LOSS_OPTIONS = {
    "label_smoothing": "a number in [0, 1]",
    "class_weight": "one number per class, separated by / (1/2/0.5)",
    "ignore_index": "an integer class index",
    "soft_targets": "true or false",
    "delta": "a positive number (huber's delta, smooth_l1's beta)",
    "reduction": "mean (the only reduction convc has)",
    "weight": "a finite, non-negative number: this output's weight in the sum of the losses",
}

def _loss_help() -> str:
    from convc.losses import LOSS_NAMES
    return ("with --train (default: cross_entropy): NAME is one of "
            f"{', '.join(LOSS_NAMES)}; KEY is one of {', '.join(LOSS_OPTIONS)} (class_weight's values separated by /; "
            "weight: this loss's weight in the sum). A model with several outputs: one --loss per output, in output "
            "order or each named OUTPUT=. Example: --loss out1=cross_entropy:label_smoothing=0.1,ignore_index=-1 "
            "--loss out2=mse:weight=0.5")


def _number(spec: str, key: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise InputError(f"--loss {spec!r}: {key}={value!r} must be {LOSS_OPTIONS[key]}")
    return v


def _flag(spec: str, key: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise InputError(f"--loss {spec!r}: {key}={value!r} must be {LOSS_OPTIONS[key]}")
    return text in ("true", "1", "yes")


def parse_one(spec: str) -> tuple[Any, float | None]:
    """``NAME[:KEY=VALUE,...]`` -> (the convc.Loss, its ``weight`` option or None)."""
    from convc.losses import LOSS_NAMES, Loss
    from convc.passes.autodiff.training import CLASS_LOSSES
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in LOSS_NAMES:
        raise InputError(f"--loss {spec!r}: unknown loss {name!r}; convc has {', '.join(LOSS_NAMES)}")
    fields: dict[str, Any] = {}
    weight = None
    seen: set[str] = set()
    for item in [p for p in rest.split(",") if p.strip()] if rest else []:
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in LOSS_OPTIONS:
            raise InputError(f"--loss {spec!r}: unknown option {key!r}; the options are {', '.join(LOSS_OPTIONS)}")
        if not eq or not value:
            raise InputError(f"--loss {spec!r}: option {key!r} needs a value: {key}=VALUE, VALUE {LOSS_OPTIONS[key]}")
        if key in seen:
            raise InputError(f"--loss {spec!r}: option {key!r} is given twice")
        seen.add(key)
        if key == "weight":
            if "/" in value:
                raise InputError(f"--loss {spec!r}: weight={value!r} is this loss's weight in the sum, one number; "
                                 "per-class weights are class_weight=1/2/...")
            weight = _number(spec, key, value)
            if weight < 0:
                raise InputError(f"--loss {spec!r}: weight={value!r} must be {LOSS_OPTIONS[key]}")
        elif key == "reduction":
            if value != "mean":
                raise InputError(f"--loss {spec!r}: reduction={value!r} is not available: convc's losses are the "
                                 "mean over the batch (reduction=mean)")
        elif key == "class_weight":
            fields["weight"] = tuple(_number(spec, key, v) for v in value.split("/"))
        elif key == "ignore_index":
            try:
                fields[key] = int(value)
            except ValueError:
                raise InputError(f"--loss {spec!r}: ignore_index={value!r} must be {LOSS_OPTIONS[key]}") from None
        elif key == "soft_targets":
            fields[key] = _flag(spec, key, value)
        else:
            fields[key] = _number(spec, key, value)
    if "weight" in fields and name not in CLASS_LOSSES:  # before convc.Loss, which calls it weight
        raise InputError(f"--loss {spec!r}: loss {name!r} has no option class_weight (class losses: "
                         f"{', '.join(CLASS_LOSSES)})")
    try:
        return Loss(name, **fields), weight
    except InputError as e:
        raise InputError(f"--loss {spec!r}: {e}") from None


def _output_of(spec: str, outputs: Sequence[str]) -> tuple[str | None, str]:
    """(the output ``spec`` names, the rest) or (None, spec). The longest matching output name
    wins, since names are the model's and may hold ``=`` or ``:``."""
    named = [o for o in outputs if spec.startswith(o + "=")]
    if named:
        out = max(named, key=len)
        return out, spec[len(out) + 1:]
    head = spec.partition(":")[0]
    if "=" in head:
        raise InputError(f"--loss {spec!r}: the model has no output {head.partition('=')[0]!r}; its outputs are "
                         f"{list(outputs)}")
    return None, spec


def parse_losses(specs: Sequence[str], outputs: Sequence[str],
                 loss_weights: Sequence[float] | None = None) -> tuple[Any, list[float] | None]:
    """The ``loss`` and ``loss_weights`` arguments of ``build_training_library`` from the --loss
    texts (``outputs``: the model's output names, in order) and --loss-weight values: one loss
    (its name alone without options) or a list of them, in output order."""
    from convc.losses import Loss
    if loss_weights is not None and len(loss_weights) != len(specs):
        raise InputError(f"{len(loss_weights)} --loss-weight for {len(specs)} --loss: give one per loss")
    given = list(loss_weights) if loss_weights is not None else [None] * len(specs)
    # per --loss: (its output or None, the convc.Loss, its weight= option, its --loss-weight)
    parsed = []
    for spec, cli_weight in zip(specs, given):
        output, rest = _output_of(spec, outputs)
        parsed.append((output, *parse_one(rest), cli_weight))
    named = [p[0] for p in parsed if p[0] is not None]
    if named:
        if len(named) != len(parsed):
            raise InputError("--loss: name the output of every loss (OUTPUT=NAME) or of none; "
                             f"{sum(p[0] is None for p in parsed)} of {len(parsed)} name none")
        twice = sorted({o for o in named if named.count(o) > 1})
        missing = [o for o in outputs if o not in named]
        if twice:
            raise InputError(f"--loss: outputs {twice} have several losses; each output takes one")
        if missing:
            raise InputError(f"--loss: outputs {missing} have no loss; name every output of the model "
                             f"({list(outputs)}) once")
        parsed.sort(key=lambda p: list(outputs).index(p[0]))
    if any(p[2] is not None for p in parsed):
        if loss_weights is not None:
            raise InputError("--loss ...:weight=W and --loss-weight both give the losses' weights: use one")
        weights = [1.0 if p[2] is None else p[2] for p in parsed]
    else:
        weights = None if loss_weights is None else [float(p[3]) for p in parsed]
    values = [p[1].name if p[1] == Loss(p[1].name) else p[1] for p in parsed]
    return (values[0] if len(values) == 1 else values), weights


COMMAND = Command(
    "compile", "compile an ONNX model ahead of time to a shared library and C header", DESCRIPTION,
    add_arguments, run,
    ("convc compile lenet.onnx -o lenet.so", "convc compile model.onnx -o model.so --batch 8 --threads 4",
     "convc compile model.onnx -o model.so --target x86-64-v3", "convc compile model.onnx -o model.o",
     "convc compile fcn.onnx -o fcn.so --input-shape x=1,3,512,512",
     "convc compile net.onnx -o train.so --train --batch 32 --loss cross_entropy:label_smoothing=0.1,ignore_index=-1",
     "convc compile net.onnx -o train.so --train --loss out1=cross_entropy --loss out2=mse:weight=0.5"))
