"""``convc example NAME``: write a small ready-to-run ONNX model from convc.models."""
from __future__ import annotations

import argparse

from convc.cli.common import EXIT_OK, Command, check_output_file, dims, elem_type, model_inputs, positive


def add_arguments(p: argparse.ArgumentParser) -> None:
    from convc.models import EXAMPLES
    p.add_argument("name", choices=sorted(EXAMPLES), help="which model: " + "; ".join(
        f"{e.name} = {e.summary}" for e in EXAMPLES.values()))
    p.add_argument("--output", "-o", metavar="FILE", help="where to write it (default: NAME.onnx)")
    p.add_argument("--batch", type=positive, metavar="N",
                   help="a fixed batch size (default: a symbolic batch dimension 'N')")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")


def run(args: argparse.Namespace) -> int:
    import onnx

    from convc.models import EXAMPLES
    example = EXAMPLES[args.name]
    path = args.output or f"{args.name}.onnx"
    check_output_file(path, "--output")
    model = example.build(batch=args.batch, seed=args.seed)
    onnx.save(model, path)
    print(f"wrote {path}: {example.summary}, seeded random weights (seed {args.seed})")
    for vi in model_inputs(model):
        print(f"  input  {vi.name}: {elem_type(vi)} {dims(vi)}")
    for vi in model.graph.output:
        print(f"  output {vi.name}: {elem_type(vi)} {dims(vi)}")
    print(f"run it with: convc run {path}")
    return EXIT_OK


COMMAND = Command(
    "example", "write a small built-in example model (lenet, cifar) as ONNX",
    "Write a small ready-to-run ONNX model with seeded random weights, so convc can be tried "
    "without downloading anything.",
    add_arguments, run,
    ("convc example lenet -o lenet.onnx", "convc example cifar --batch 4"))
