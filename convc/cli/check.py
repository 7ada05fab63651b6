"""``convc check MODEL.onnx``: the nodes convc cannot compile, or the first layer whose numbers differ
from onnxruntime (the library is convc/check.py)."""
from __future__ import annotations

import argparse
import sys

from convc.check import BF16_TOLERANCE, DEFAULT_TOLERANCE, INT8_TOLERANCE, check_model, check_quantized
from convc.cli.common import (EXIT_OK, Command, Progress, add_input_shape_flag, fail, given_inputs, input_shapes,
                              input_spec, load_onnx, model_inputs, positive)
from convc.errors import ConvcError
from convc.options import PRECISIONS

EXIT_DIFFERS = 1  # the model compiles but a tensor differs from the oracle

DESCRIPTION = (
    "List every node of MODEL.onnx that convc cannot compile (op, attribute, reason) in one go. For a model "
    "it can compile, run convc and onnxruntime (or the ONNX reference evaluator when onnxruntime is not "
    "installed) on seeded random inputs, compare every intermediate tensor in execution order, and report "
    "the first one whose error exceeds the tolerance: the layer where the numbers start to differ. Exit "
    "status: 0 when every tensor matches, 1 when a tensor differs (a fault of convc's, the model is fine), "
    "2 for errors in the model (nodes convc cannot compile, an unreadable file), like every convc command. "
    "With --precision bf16: compile convc in bf16 and report each output's deviation from float32 "
    "(max |bf16 - float32| / max |float32|), the top-1 agreement of class-score outputs, and the first layer "
    "whose deviation exceeds the tolerance; exit status 1 when an output exceeds it. "
    "With --float FLOAT.onnx: MODEL.onnx is an int8 (QDQ) model quantized from FLOAT.onnx; run both (the int8 "
    "one by convc, or by the oracle when convc cannot compile it) and report each output's error (max |int8 - "
    "float| / max |float|), the top-1 agreement of class-score outputs and the weight bytes the int8 layers "
    f"save; exit status 1 when an output's error exceeds the tolerance (default {INT8_TOLERANCE:g}).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to check")
    p.add_argument("--batch", type=positive, metavar="N", help="fix a symbolic batch dimension to N (default: 1)")
    add_input_shape_flag(p)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random inputs (default: 0; not with every input given by --input)")
    p.add_argument("--tolerance", type=float, default=None, metavar="TOL",
                   help=f"largest accepted max |convc - oracle| / max(1, max |oracle|) per tensor "
                        f"(default: {DEFAULT_TOLERANCE:g}); with --precision bf16, the largest accepted "
                        f"max |bf16 - float32| / max |float32| (default: {BF16_TOLERANCE:g})")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 (default): convc against the oracle; bf16: what compiling with --precision bf16 "
                        "changes, against float32")
    p.add_argument("--input", "-i", dest="inputs", action="append", type=input_spec, default=[],
                   metavar="NAME=FILE.npy",
                   help="feed input NAME from a .npy file instead of random values (repeatable; plain FILE.npy "
                        "for a single-input model)")
    p.add_argument("--float", dest="original", metavar="FLOAT.onnx",
                   help="MODEL.onnx is int8: compare it with this float original (top-1 agreement, logit error)")
    p.add_argument("--perturb", metavar="NODE", help=argparse.SUPPRESS)  # testing hook, see CONVC_CHECK_PERTURB


def run(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    model = load_onnx(args.model)
    given = given_inputs(model, args.inputs)
    if args.seed is not None and given and len(given) == len(model_inputs(model)):
        raise ConvcError("--seed seeds random inputs, and --input gives every input of the model: drop one of them")
    if args.original:
        if args.precision != "float32" or args.perturb:
            raise ConvcError("--float compares an int8 model with its float original: not with --precision or "
                             "--perturb")
        progress(f"running {args.model} and its float original {args.original}")
        quantized = check_quantized(model, load_onnx(args.original), batch=args.batch,
                                    seed=0 if args.seed is None else args.seed, tolerance=args.tolerance,
                                    inputs=given or None, input_shapes=input_shapes(args))
        quantized.model, quantized.original = args.model, args.original
        print(quantized.render())
        sys.stdout.flush()
        return EXIT_OK if quantized.ok else EXIT_DIFFERS
    progress("importing, compiling and comparing layer by layer")
    report = check_model(model, batch=args.batch, seed=0 if args.seed is None else args.seed, tolerance=args.tolerance, perturb=args.perturb,
                         precision=args.precision, inputs=given or None, input_shapes=input_shapes(args))
    report.model = args.model
    print(report.render())
    sys.stdout.flush()
    if report.unsupported:  # an error in the model, as for every command: exit 2 with one convc: error: line
        return fail(f"{args.model}: convc cannot compile {len(report.unsupported)} node(s), listed above")
    return EXIT_OK if report.ok else EXIT_DIFFERS


COMMAND = Command(
    "check", "list the nodes convc cannot compile, or the first layer whose numbers differ from onnxruntime",
    DESCRIPTION, add_arguments, run,
    ("convc check model.onnx", "convc check model.onnx --batch 4 --seed 1 --tolerance 1e-3",
     "convc check model.onnx --precision bf16 --input x=image.npy",
     "convc check model.int8.onnx --float model.onnx --input x=images.npy"))
