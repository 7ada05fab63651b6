"""``convc compile MODEL.onnx``: a shared library (or object file) with the weights embedded, and its C header."""
from __future__ import annotations

import argparse
from pathlib import Path

from convc.cli.common import (EXIT_OK, Command, Progress, add_input_shape_flag, add_precision_flag, add_winograd_flag,
                              check_output_file, input_shapes, load_onnx, mb, numeric_options, positive)
from convc.errors import ConvcError

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
    from convc.codegen.aot_train import LOSSES
    from convc.optim import OPTIMIZERS
    train = p.add_argument_group("training artifact")
    train.add_argument("--train", action="store_true",
                       help="build a training library: adds convc_train_step (forward, loss, backward, update in "
                            "one call) and a training state the context owns; --batch is the training batch")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="with --train (default: adam)")
    train.add_argument("--lr", type=float, metavar="LR", help="with --train: initial learning rate (default: the "
                                                               "optimizer's)")
    train.add_argument("--loss", choices=LOSSES, action="append",
                       help="with --train (default: cross_entropy); a model with several outputs: one --loss per "
                            "output, in output order")
    train.add_argument("--loss-weight", type=float, action="append", dest="loss_weight", metavar="W",
                       help="with --train and several outputs: one per --loss, the weights of the losses' sum "
                            "(default: 1 each)")
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
        losses = args.loss or ["cross_entropy"]
        if args.loss_weight is not None and len(args.loss_weight) != len(losses):
            raise ConvcError(f"{len(args.loss_weight)} --loss-weight for {len(losses)} --loss: give one per loss")
        result = build_training_library(model, out, batch=args.batch, optimizer=args.optimizer or "adam",
                                        lr=args.lr, loss=losses[0] if len(losses) == 1 else losses,
                                        seed=args.seed or 0, target=args.target, progress=progress,
                                        header=args.header, loss_weights=args.loss_weight)
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
        heads = "; ".join(f"{t['loss']} loss" + (f" x {t['weight']:g}" if t["weight"] != 1 else "") +
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


COMMAND = Command(
    "compile", "compile an ONNX model ahead of time to a shared library and C header", DESCRIPTION,
    add_arguments, run,
    ("convc compile lenet.onnx -o lenet.so", "convc compile model.onnx -o model.so --batch 8 --threads 4",
     "convc compile model.onnx -o model.so --target x86-64-v3", "convc compile model.onnx -o model.o",
     "convc compile fcn.onnx -o fcn.so --input-shape x=1,3,512,512"))
