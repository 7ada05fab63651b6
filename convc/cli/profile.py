"""``convc profile MODEL.onnx``: the per-layer report of convc/profile.py (and, with --train,
convc/train_profile.py), rendered by convc/report.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convc.cli.common import (EXIT_OK, Command, Progress, add_input_shape_flag, add_precision_flag, add_winograd_flag,
                              check_output_file, input_shapes, load_onnx, numeric_options, positive)
from convc.errors import ConvcError
from convc.options import applied, resolve_options
from convc.profile import CONVENTION
from convc.report import (render_rich, render_text, render_train_by_op_rich, render_train_by_op_text,
                          render_train_rich, train_by_op_csv, train_by_op_json)
from convc.report_plot import check_plot_path, plot, plot_train

DESCRIPTION = (
    "Report per-layer parameters, MACs, other-op FLOPs, weight and activation bytes of MODEL.onnx after "
    "convc's folding and fusion, and the activation memory plan; with --measure, also each layer's "
    "time, achieved GFLOP/s and its share of this machine's peak.\n\n" + CONVENTION)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to profile")
    p.add_argument("--batch", type=positive, metavar="N", help="fix a symbolic batch dimension to N (default: 1)")
    add_input_shape_flag(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default; rich when installed and writing to a terminal), json or csv")
    p.add_argument("--measure", action="store_true",
                   help="compile and run the model: per-layer time (median of --repeat runs), achieved GFLOP/s "
                        "and its percentage of this machine's single-core and all-core FMA peak (measured once, "
                        "cached in $CONVC_CACHE_DIR or ~/.cache/convc)")
    p.add_argument("--repeat", "-r", type=positive, metavar="R",
                   help="runs timed with --measure (default: 10)")
    p.add_argument("--threads", "-t", type=positive, metavar="T",
                   help="worker threads with --measure (not with --train: the training step runs on one thread)")
    add_winograd_flag(p)
    add_precision_flag(p)
    p.add_argument("--plot", metavar="FILE", help="also draw MACs (and time) per layer and the memory plan "
                                                  "(with --train: forward and backward MACs and times per layer "
                                                  "and the step's memory) to FILE (.png or .svg; needs matplotlib)")
    p.add_argument("--top", type=positive, metavar="N", help="only the N costliest layers (by time with "
                                                               "--measure, else by MACs), or op types with --by-op; "
                                                               "totals stay whole-model; every --format")
    p.add_argument("--by-op", action="store_true", help="one row per op type instead of per layer (a Conv with BN "
                                                        "and Relu fused in counts as a Conv; the fused combinations "
                                                        "are listed; with --train, the step's layers by op "
                                                        "type); every --format")
    p.add_argument("--train", action="store_true",
                   help="profile the training step instead: forward and backward MACs per layer, saved "
                        "activations, gradient and optimizer-state bytes, and the peak memory of the planned step")
    p.add_argument("--loss", choices=("cross_entropy", "mse", "bce"),
                   help="the loss with --train (default: cross_entropy)")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"),
                   help="the optimizer with --train, whose state is counted (default: sgd)")


def refuse_conflicts(args: argparse.Namespace) -> None:
    """Flags that cannot apply together are refused before any work, never silently ignored."""
    if args.train:
        if args.threads:
            raise ConvcError("--threads is not available with --train: the training step runs on the calling thread")
        if not args.winograd:
            raise ConvcError("--no-winograd is not available with --train: training never runs Winograd convs")
        if args.precision not in (None, "float32"):
            raise ConvcError(f"--precision {args.precision} is not available with --train: training runs float32")
        if args.input_shapes:
            raise ConvcError("--input-shape is not available with --train: the training step runs at the model's "
                             "input shape, with --batch")
    else:
        for flag, value in (("--loss", args.loss), ("--optimizer", args.optimizer)):
            if value is not None:
                raise ConvcError(f"{flag} applies to the training step: add --train")
    if not args.measure:
        for flag, value in (("--repeat", args.repeat), ("--threads", args.threads)):
            if value is not None:
                raise ConvcError(f"{flag} only applies when timing: add --measure")


def run(args: argparse.Namespace) -> int:
    import convc
    progress = Progress(args.quiet)
    refuse_conflicts(args)
    repeats = args.repeat or 10
    if args.plot:
        check_plot_path(args.plot)  # before minutes of measuring
        check_output_file(args.plot, "--plot")
    model = load_onnx(args.model)
    progress("analysing" + (" and measuring" if args.measure else ""))
    if getattr(args, "train", False):
        return _run_train(args, model, progress)
    with applied(resolve_options(threads=args.threads, **numeric_options(args))):  # the passes and --measure's compile
        result = convc.profile(model, batch=args.batch, measure=args.measure, repeats=repeats, threads=args.threads,
                               progress=progress, input_shapes=input_shapes(args))
    for warning in result.warnings:  # also on stderr: a table piped to a file must not hide it
        print(f"convc: warning: {warning}", file=sys.stderr)
    result.model = Path(args.model).name
    if args.plot:
        plot(result, args.plot)
        progress(f"wrote {args.plot}")
    if args.format == "json":
        sys.stdout.write(result.to_json(top=args.top, by_op=args.by_op) + "\n")
    elif args.format == "csv":
        sys.stdout.write(result.to_csv(top=args.top, by_op=args.by_op))
    elif _rich_available() and sys.stdout.isatty():
        render_rich(result, top=args.top, by_op=args.by_op)
    else:
        sys.stdout.write(render_text(result, top=args.top, by_op=args.by_op))
    return EXIT_OK


def _run_train(args: argparse.Namespace, model: Any, progress: Any) -> int:
    """``convc profile --train``: the training step's view (convc/train_profile.py)."""
    import convc
    optimizers = {"sgd": lambda: convc.optim.SGD(0.01), "momentum": lambda: convc.optim.SGD(0.01, momentum=0.9),
                  "adagrad": convc.optim.Adagrad, "rmsprop": convc.optim.RMSprop, "adam": convc.optim.Adam,
                  "adamw": convc.optim.AdamW}
    from convc.train_profile import render_text as render_train
    result = convc.profile(model, batch=args.batch, measure=args.measure, repeats=args.repeat or 10, train=True,
                           loss=args.loss or "cross_entropy", optimizer=optimizers[args.optimizer or "sgd"](),
                           progress=progress)
    result.model = Path(args.model).name
    if args.plot:
        plot_train(result, args.plot)
        progress(f"wrote {args.plot}")
    tty = _rich_available() and sys.stdout.isatty()
    if args.by_op:
        if args.format == "json":
            sys.stdout.write(train_by_op_json(result, top=args.top) + "\n")
        elif args.format == "csv":
            sys.stdout.write(train_by_op_csv(result, top=args.top))
        elif tty:
            render_train_by_op_rich(result, top=args.top)
        else:
            sys.stdout.write(render_train_by_op_text(result, top=args.top))
    elif args.format == "json":
        sys.stdout.write(result.to_json(top=args.top) + "\n")
    elif args.format == "csv":
        sys.stdout.write(result.to_csv(top=args.top))
    elif tty:
        render_train_rich(result, top=args.top)
    else:
        sys.stdout.write(render_train(result, top=args.top))
    return EXIT_OK


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


COMMAND = Command(
    "profile", "per-layer MACs, parameters and memory of a model", DESCRIPTION, add_arguments, run,
    ("convc profile resnet50.onnx --top 15", "convc profile model.onnx --by-op",
     "convc profile model.onnx --format csv > layers.csv",
     "convc profile model.onnx --measure --plot profile.svg"))
