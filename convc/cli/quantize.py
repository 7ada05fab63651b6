"""``convc quantize MODEL.onnx -o MODEL.int8.onnx --calibrate DATA.npy|DIR``: post-training static
quantization to a QDQ int8 model (the library is convc/quantize.py)."""
from __future__ import annotations

import argparse
import sys

from convc.cli.common import EXIT_OK, Command, Progress, check_output_file, positive
from convc.errors import ConvcError
from convc.quantize import load_calibration, quantize_model
from convc.quantize_calibrate import METHODS

DESCRIPTION = (
    "Quantize the float model MODEL.onnx to int8 with calibration data and write a QDQ ONNX model "
    "(QuantizeLinear/DequantizeLinear around every Conv, Gemm and MatMul, as onnxruntime's quantize_static "
    "writes them) that convc, onnxruntime and OpenVINO run. BatchNormalization is folded into the convs "
    "first; activations are u8 with a scale and zero point from their range on the calibration data "
    "(--method); weights int8, symmetric, one scale per output channel (unless --per-tensor); biases int32. "
    "The float model runs through convc to calibrate (onnx.reference for a model convc cannot compile). "
    "Then the quantized model runs on the calibration data and the accuracy change against the float model "
    "is printed: top-1 agreement of class-score outputs, max and mean |int8 - float|. --calibrate takes a "
    ".npy file of N samples stacked on the first axis (preprocessed as for inference) or a directory of "
    "such files, concatenated in name order. Exit status 0 when the model is written, 2 for errors.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the float ONNX model to quantize")
    p.add_argument("--output", "-o", required=True, metavar="OUT.onnx", help="where to write the QDQ model")
    p.add_argument("--calibrate", "-c", required=True, metavar="DATA",
                   help="calibration data: a .npy file (N samples on the first axis) or a directory of .npy files")
    p.add_argument("--method", choices=METHODS, default="minmax",
                   help="activation ranges: minmax (default, the extremes seen), percentile (clip at the "
                        "--percentile of |x|) or entropy (the KL-divergence threshold, as TensorRT)")
    p.add_argument("--percentile", type=float, default=None, metavar="P",
                   help="with --method percentile: the percentile of |x| kept (default 99.999)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer instead of per output channel")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: exact on AVX2 int8 kernels (vpmaddubsw's int16 sums cannot saturate), as "
                        "onnxruntime's reduce_range; costs a little accuracy")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNormalization as float ops")
    p.add_argument("--batch-size", type=positive, metavar="N",
                   help="samples per calibration run for a model with a symbolic batch (default 16; a model with "
                        "a fixed batch runs at its own, and refuses another)")
    p.add_argument("--threads", "-t", type=positive, metavar="T", help="worker threads of the calibration runs")
    p.add_argument("--no-eval", action="store_true",
                   help="skip running the quantized model to report the accuracy change")


def run(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    if args.percentile is not None and args.method != "percentile":
        raise ConvcError(f"--percentile applies to --method percentile, not --method {args.method}")
    check_output_file(args.output, "--output")
    data = load_calibration(args.calibrate)
    progress(f"read {len(data)} calibration sample(s) of shape {list(data.shape[1:])} from {args.calibrate}")
    result = quantize_model(args.model, data, method=args.method, per_channel=not args.per_tensor,
                            percentile=99.999 if args.percentile is None else args.percentile,
                            reduce_range=args.reduce_range, fold_bn=not args.no_fold_bn, batch_size=args.batch_size,
                            output=args.output, threads=args.threads, progress=progress, evaluate=not args.no_eval)
    print(result.report.render())
    print(f"wrote {args.output}")
    sys.stdout.flush()
    return EXIT_OK


COMMAND = Command(
    "quantize", "quantize a float model to int8 (QDQ ONNX) with calibration data, and report the accuracy change",
    DESCRIPTION, add_arguments, run,
    ("convc quantize model.onnx -o model.int8.onnx --calibrate images.npy",
     "convc quantize model.onnx -o model.int8.onnx --calibrate calib_dir/ --method percentile --percentile 99.99"))
