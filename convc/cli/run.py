"""``convc run MODEL.onnx``: compile a model, run it on .npy (or seeded random) inputs, print and save its outputs."""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convc.cli.common import (EXIT_OK, Command, Progress, add_input_shape_flag, add_precision_flag, add_winograd_flag,
                              check_output_dir, given_inputs, input_shapes, input_spec, load_onnx, numeric_options,
                              positive)
from convc.errors import InputError


def _format_values(a: np.ndarray, n: int = 6) -> str:
    flat = a.reshape(-1)
    vals = ", ".join(f"{v:.6g}" for v in flat[:n].tolist())
    return f"[{vals}{', ...' if flat.size > n else ''}]"


def class_scores(y: np.ndarray) -> np.ndarray | None:
    """An output read as class scores, one row per sample: (N, C), or any shape whose only non-unit
    axis after the batch is the classes, like a (1, 1000, 1, 1) SqueezeNet or DenseNet output (a
    1-D output is one sample). None when the output is not one vector of scores per sample."""
    if y.ndim == 0:
        return None
    if y.ndim == 1:
        return y.reshape(1, -1) if y.size > 1 else None
    rest = [d for d in y.shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < 2:
        return None
    return y.reshape(y.shape[0], rest[0])


def top_k(scores: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The ``k`` highest (class, score) of each row, highest first (ties: lower class first)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(row[c])) for c in idx] for row, idx in zip(scores, order)]


TOP_K_ROWS = 4  # rows whose top-k the text output shows


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] or "output"  # 120: well under any file-name limit


def output_filenames(names: Sequence[str], suffix: str = ".npy") -> dict[str, str]:
    """A distinct file name for each output name: sanitized (no path separators), and numbered when
    two names would share a file ('p/q' and 'p_q'), compared case-insensitively for case-insensitive
    file systems. Deterministic: names that are already safe file names keep them, the others are
    numbered in output order."""
    taken: set[str] = set()
    files: dict[str, str] = {}
    for name in names:
        if _safe_filename(name) == name and (name + suffix).casefold() not in taken:
            files[name] = name + suffix
            taken.add(files[name].casefold())
    for name in names:
        if name in files:
            continue
        base = _safe_filename(name)
        file, i = base + suffix, 1
        while file.casefold() in taken:
            i += 1
            file = f"{base}_{i}{suffix}"
        taken.add(file.casefold())
        files[name] = file
    return {name: files[name] for name in names}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to compile and run")
    p.add_argument("--batch", type=positive, metavar="N",
                   help="fix a symbolic batch dimension to N (default: 1, or the batch of the given inputs)")
    add_input_shape_flag(p)
    p.add_argument("--input", "-i", dest="inputs", action="append", type=input_spec, default=[],
                   metavar="NAME=FILE.npy",
                   help="feed input NAME from a .npy file (repeatable; plain FILE.npy for a single-input "
                        "model). Inputs not given get seeded random normal values")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--repeat", "-r", type=positive, default=10, metavar="R",
                   help="time R runs and report the median latency (default: 10)")
    p.add_argument("--threads", "-t", type=positive, metavar="T",
                   help="cap on the worker threads of the compiled code, passed to convc.compile(threads=T)")
    add_winograd_flag(p)
    add_precision_flag(p)
    p.add_argument("--output-dir", "-o", metavar="DIR",
                   help="save each output as DIR/<output name>.npy (DIR is created if its parent exists; names are "
                        "made safe file names, numbered when two would be the same)")
    p.add_argument("--top-k", type=positive, default=5, metavar="K",
                   help="for an output of class scores ((N, C), or one non-unit axis after the batch such as "
                        "(1, 1000, 1, 1)): print the K highest classes and scores of each sample (default: 5)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json: inputs, outputs (shape, first values, statistics, top-k), "
                        "latency and throughput as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    import convc
    progress = Progress(args.quiet)
    out_dir = check_output_dir(args.output_dir, "--output-dir") if args.output_dir else None
    if args.inputs:  # the files are checked against the model's inputs before any compile
        source = load_onnx(args.model)
        given = given_inputs(source, args.inputs)
    else:  # the path: a warm compile from the cache then never imports onnx (about 1 s of a warm start)
        source, given = args.model, {}

    model = convc.compile(source, batch=args.batch, threads=args.threads, progress=progress,
                          input_shapes=input_shapes(args), **numeric_options(args))
    progress(f"compiled {Path(args.model).name}")

    text = args.format == "text"
    report: dict = {"model": Path(args.model).name, "inputs": [], "outputs": []}
    rng = np.random.default_rng(args.seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if spec.name in given:
            feeds[spec.name] = given[spec.name]
            source = "file"
            if text:
                print(f"input  {spec.name!r}: {given[spec.name].dtype} {given[spec.name].shape} from file")
        else:
            feeds[spec.name] = rng.standard_normal(_random_shape(spec, given)).astype(spec.dtype)
            source = f"random normal (seed {args.seed})"
            if text:
                print(f"input  {spec.name!r}: {spec.dtype} {spec.shape} random normal values (seed {args.seed}; "
                      f"give a file with --input {spec.name}=FILE.npy)")
        report["inputs"].append({"name": spec.name, "shape": list(feeds[spec.name].shape),
                                 "dtype": str(feeds[spec.name].dtype), "source": source})

    outputs = model.run(feeds)  # also the warm-up: a new batch size compiles here
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - t0)

    for name, y in outputs.items():
        scores = class_scores(y)
        best = top_k(scores, args.top_k) if scores is not None else None
        entry = {"name": name, "shape": list(y.shape), "dtype": str(y.dtype),
                 "first_values": y.reshape(-1)[:6].tolist()}
        if y.size:
            entry.update(min=float(y.min()), max=float(y.max()), mean=float(y.mean()))
        if best is not None:
            entry["argmax"] = [row[0][0] for row in best]
            entry["top_k"] = [[{"class": c, "score": v} for c, v in row] for row in best]
        report["outputs"].append(entry)
        if not text:
            continue
        print(f"output {name!r}: {y.dtype} {y.shape}")
        print(f"  first values: {_format_values(y)}")
        if y.size:
            print(f"  min {y.min():.6g}  max {y.max():.6g}  mean {y.mean():.6g}")
        if best is not None:
            rows = entry["argmax"]
            as_classes = "" if scores.shape == y.shape else f" (read as {scores.shape[0]} x {scores.shape[1]} classes)"
            print(f"  argmax per row: {rows[:16]}{' ...' if len(rows) > 16 else ''}{as_classes}")
            for i, row in enumerate(best[:TOP_K_ROWS]):
                print(f"  top-{len(row)} of row {i}: " + ", ".join(f"{c} ({v:.4g})" for c, v in row))
            if len(best) > TOP_K_ROWS:
                print(f"  (top-k of {len(best) - TOP_K_ROWS} more rows: --format json)")
    ms = [t * 1e3 for t in times]
    median = statistics.median(ms)
    batch = _batch_size(feeds)
    report["latency_ms"] = {"median": median, "min": min(ms), "runs": args.repeat}
    report["batch"] = batch
    report["images_per_second"] = batch / (median / 1e3) if median > 0 and batch else None
    if text:
        print(f"latency: median {median:.3f} ms, min {min(ms):.3f} ms over {args.repeat} run(s)")
        if report["images_per_second"]:
            print(f"throughput: {report['images_per_second']:.1f} images/s at batch {batch} (from the median)")

    report["saved"] = {}
    if out_dir is not None:
        out_dir.mkdir(exist_ok=True)
        for name, file in output_filenames(list(outputs)).items():
            path = out_dir / file
            np.save(path, outputs[name])
            report["saved"][name] = str(path)
            if text:
                print(f"saved {path}" if file == f"{name}.npy" else f"saved output {name!r} as {path}")
    if not text:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def _random_shape(spec, given: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The shape of an input given no file: the compiled one; of a model that compiles on its first
    run (symbolic height or width), a symbolic batch is the given inputs' (else 1), and any other
    symbolic dimension must be given with --input-shape."""
    shape = tuple(spec.shape)
    free = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if [i for i in free if i > 0]:
        shown = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
        raise InputError(f"input {spec.name!r} has symbolic dimensions {shown}: give its shape with --input-shape "
                         f"{spec.name}=d0,d1,... (or feed it with --input {spec.name}=FILE.npy)")
    if free:
        batches = {a.shape[0] for a in given.values() if a.ndim}
        shape = (batches.pop() if len(batches) == 1 else 1, *shape[1:])
    return shape


def _batch_size(feeds: dict[str, np.ndarray]) -> int | None:
    """The samples per run: the leading axis of the inputs, when they all agree."""
    sizes = {a.shape[0] for a in feeds.values() if a.ndim}
    return sizes.pop() if len(sizes) == 1 else None


COMMAND = Command(
    "run", "compile an ONNX model to native code and run it",
    "Compile MODEL.onnx to native code for this CPU, run it on the given .npy inputs (or on seeded "
    "random inputs), print each output's shape and first values (and, for class scores, the top-k classes "
    "of each sample), and time repeated runs: median latency and images per second.",
    add_arguments, run,
    ("convc run lenet.onnx", "convc run lenet.onnx --batch 8 --repeat 100",
     "convc run model.onnx --input data=x.npy --output-dir out/", "convc run squeezenet.onnx --top-k 3",
     "convc run fcn.onnx --input-shape x=1,3,512,512",
     "convc run lenet.onnx --batch 32 --format json"))
