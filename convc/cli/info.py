"""``convc info MODEL.onnx``: a model's inputs, outputs and the graph convc imports it to."""
from __future__ import annotations

import argparse
from pathlib import Path

from convc.cli.common import (EXIT_OK, Command, add_input_shape_flag, check_output_file, dims, elem_type, input_shapes,
                              load_onnx, model_inputs, positive)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to inspect")
    p.add_argument("--batch", type=positive, metavar="N",
                   help="import with a symbolic batch dimension fixed to N (default: 1)")
    add_input_shape_flag(p)
    p.add_argument("--optimized", action="store_true",
                   help="show the graph convc compiles instead: after constant folding, batch-norm folding, fusion, "
                        "the channels-last layout and kernel selection")
    p.add_argument("--dot", metavar="FILE", help="also write the graph shown as Graphviz DOT to FILE")


def run(args: argparse.Namespace) -> int:
    from convc.compiler import load_graph
    if args.dot:
        check_output_file(args.dot, "--dot")
    onnx_model = load_onnx(args.model)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onnx_model.opset_import)
    producer = " ".join(x for x in (onnx_model.producer_name, onnx_model.producer_version) if x) or "unknown"
    print(f"model {args.model}: IR version {onnx_model.ir_version}, opsets {opsets}, producer {producer}")
    print(f"  {len(onnx_model.graph.node)} ONNX node(s), {len(onnx_model.graph.initializer)} initializer(s)")
    print("inputs:")
    for vi in model_inputs(onnx_model):
        print(f"  {vi.name}: {elem_type(vi)} {dims(vi)}")
    print("outputs:")
    for vi in onnx_model.graph.output:
        print(f"  {vi.name}: {elem_type(vi)} {dims(vi)}")
    graph = load_graph(onnx_model, args.batch, input_shapes=input_shapes(args))
    if args.optimized:
        from convc.passes.pipeline import pipeline
        graph = pipeline(graph).graph
        print(f"\noptimized graph ({len(list(graph.ops()))} ops; the imported one: convc info without --optimized):")
    print()
    print(graph.dump())
    if args.dot:
        Path(args.dot).write_text(graph.to_dot())
        print(f"\nwrote {args.dot} (render with: dot -Tsvg {args.dot} -o graph.svg)")
    return EXIT_OK


COMMAND = Command(
    "info", "show a model's inputs, outputs and imported (or optimized) graph",
    "Print MODEL.onnx's inputs and outputs and the convc graph it imports to (one line per op, with "
    "shapes and the attributes that differ from their defaults), or with --optimized the graph convc "
    "compiles after its passes, optionally writing the graph as Graphviz DOT.",
    add_arguments, run,
    ("convc info lenet.onnx", "convc info lenet.onnx --optimized", "convc info lenet.onnx --dot lenet.dot"))
