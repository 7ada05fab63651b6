"""``convc profile MODEL.onnx``: the per-layer report of convc/profile.py (and, with --train,
convc/train_profile.py), rendered by convc/report.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convc.cli.common import EXIT_OK, Command, Progress, check_output_file, load_onnx, positive
from convc.profile import CONVENTION
from convc.report import check_plot_path, plot, render_rich, render_text

DESCRIPTION = (
    "Report per-layer parameters, MACs, other-op FLOPs, weight and activation bytes of MODEL.onnx after "
    "convc's folding and fusion, and the activation memory plan; with --measure, also each layer's "
    "time, achieved GFLOP/s and its share of this machine's peak.\n\n" + CONVENTION)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to profile")
    p.add_argument("--batch", type=positive, metavar="N", help="fix a symbolic batch dimension to N (default: 1)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default; rich when installed and writing to a terminal), json or csv")
    p.add_argument("--measure", action="store_true",
                   help="compile and run the model: per-layer time (median of --repeat runs), achieved GFLOP/s "
                        "and its percentage of this machine's single-core and all-core FMA peak (measured once, "
                        "cached in $CONVC_CACHE_DIR or ~/.cache/convc)")
    p.add_argument("--repeat", "-r", type=positive, default=10, metavar="R",
                   help="runs timed with --measure (default: 10)")
    p.add_argument("--threads", "-t", type=positive, metavar="T", help="worker threads with --measure")
    p.add_argument("--plot", metavar="FILE", help="also draw MACs (and time) per layer and the memory plan "
                                                  "to FILE (.png or .svg; needs matplotlib)")
    p.add_argument("--top", type=positive, metavar="N", help="only the N costliest layers (by time with "
                                                               "--measure, else by MACs); totals stay whole-model")
    p.add_argument("--by-op", action="store_true", help="one row per op type instead of per layer")
    p.add_argument("--train", action="store_true",
                   help="profile the training step instead: forward and backward MACs per layer, saved "
                        "activations, gradient and optimizer-state bytes, and the peak memory of the planned step")
    p.add_argument("--loss", choices=("cross_entropy", "mse", "bce"), default="cross_entropy",
                   help="the loss with --train (default: cross_entropy)")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"), default="sgd",
                   help="the optimizer with --train, whose state is counted (default: sgd)")


def run(args: argparse.Namespace) -> int:
    import convc
    progress = Progress(args.quiet)
    if args.plot:
        check_plot_path(args.plot)  # before minutes of measuring
        check_output_file(args.plot, "--plot")
    model = load_onnx(args.model)
    progress("analysing" + (" and measuring" if args.measure else ""))
    if getattr(args, "train", False):
        return _run_train(args, model, progress)
    result = convc.profile(model, batch=args.batch, measure=args.measure, repeats=args.repeat, threads=args.threads)
    result.model = Path(args.model).name
    if args.plot:
        plot(result, args.plot)
        progress(f"wrote {args.plot}")
    if args.format == "json":
        sys.stdout.write(result.to_json() + "\n")
    elif args.format == "csv":
        sys.stdout.write(result.to_csv())
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
    result = convc.profile(model, batch=args.batch, measure=args.measure, repeats=args.repeat, train=True,
                           loss=args.loss, optimizer=optimizers[args.optimizer]())
    result.model = Path(args.model).name
    if args.format == "json":
        sys.stdout.write(result.to_json() + "\n")
    elif args.format == "csv":
        sys.stdout.write(result.to_csv())
    else:
        sys.stdout.write(str(result))
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
