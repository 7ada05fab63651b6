"""The ``convc`` command line: compile and run ONNX models, inspect them, write example models.

Each subcommand is one ``Command`` in ``COMMANDS``: a name, its help texts, a function adding its
arguments and a function running it. Adding a subcommand (profile, check, compile) is one more
entry in that list.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convc.errors import ConvcError, InputError

EXIT_OK = 0
EXIT_ERROR = 2  # what argparse uses for usage errors; convc errors share it


# --- helpers -------------------------------------------------------------------------------

class Progress:
    """Prints compile stages to stderr with the time since the start, unless quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()
        self._layer_shown = 0.0  # when a per-layer line was last printed
        self._tty = sys.stderr.isatty()

    def __call__(self, stage: str) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        line = f"convc: [{now - self.start:6.2f}s] {stage}"
        if stage.startswith("codegen ["):  # one per layer: rewrite one line on a terminal, else every 0.5 s
            if self._tty:
                print("\r" + line[:150].ljust(100), end="", file=sys.stderr, flush=True)
                self._layer_shown = -1.0
            elif now - self._layer_shown >= 0.5:
                print(line, file=sys.stderr, flush=True)
                self._layer_shown = now
            return
        if self._layer_shown < 0:  # end the rewritten line
            print(file=sys.stderr)
            self._layer_shown = 0.0
        print(line, file=sys.stderr, flush=True)


def load_onnx(path: str):
    """Read an ONNX file (external data confined to its directory); ModelImportError for anything unreadable."""
    from convc.frontend.onnx.reader import read_model
    return read_model(path)


def _dims(value_info) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in dims) + "]"


def _elem_type(value_info) -> str:
    import onnx
    t = value_info.type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(t).name if t else "?"


def _model_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _input_spec(text: str) -> tuple[str | None, str]:
    name, sep, path = text.partition("=")
    if not sep:
        return None, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _format_values(a: np.ndarray, n: int = 6) -> str:
    flat = a.reshape(-1)
    vals = ", ".join(f"{v:.6g}" for v in flat[:n].tolist())
    return f"[{vals}{', ...' if flat.size > n else ''}]"


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


def _writable_dir(directory: Path, flag: str, path: str) -> None:
    if not directory.exists():
        raise ConvcError(f"{flag} {path}: directory {directory} does not exist")
    if not directory.is_dir():
        raise ConvcError(f"{flag} {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConvcError(f"{flag} {path}: directory {directory} is not writable")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output file that cannot be written, before any work: a missing directory is not
    created (a typo should not make directories), and nothing compiles for minutes to fail at the end."""
    p = Path(path)
    if p.is_dir():
        raise ConvcError(f"{flag} {path}: is a directory, expected a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConvcError(f"{flag} {path}: the file exists and is not writable")
    _writable_dir(p.parent, flag, str(path))
    return p


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """An output directory: an existing writable one, or a new one whose parent exists (created later)."""
    p = Path(path)
    if p.exists():
        _writable_dir(p, flag, str(path))
    else:
        _writable_dir(p.parent, flag, str(path))
    return p


def _load_npy(name: str, path: str) -> np.ndarray:
    if not Path(path).exists():
        raise FileNotFoundError(2, "no such file", path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"input {name!r}: cannot read {path} as a .npy array ({e})") from None


# --- convc run -----------------------------------------------------------------------------

def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to compile and run")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="fix a symbolic batch dimension to N (default: 1, or the batch of the given inputs)")
    p.add_argument("--input", "-i", dest="inputs", action="append", type=_input_spec, default=[],
                   metavar="NAME=FILE.npy",
                   help="feed input NAME from a .npy file (repeatable; plain FILE.npy for a single-input "
                        "model). Inputs not given get seeded random normal values")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--repeat", "-r", type=_positive, default=10, metavar="R",
                   help="time R runs and report the median latency (default: 10)")
    p.add_argument("--threads", "-t", type=_positive, metavar="T",
                   help="cap on the worker threads of the compiled code, passed to convc.compile(threads=T)")
    p.add_argument("--output-dir", "-o", metavar="DIR",
                   help="save each output as DIR/<output name>.npy (DIR is created if its parent exists; names are "
                        "made safe file names, numbered when two would be the same)")


def _cmd_run(args: argparse.Namespace) -> int:
    import convc
    progress = Progress(args.quiet)
    out_dir = check_output_dir(args.output_dir, "--output-dir") if args.output_dir else None
    onnx_model = load_onnx(args.model)
    given: dict[str, np.ndarray] = {}
    declared = [i.name for i in _model_inputs(onnx_model)]
    for name, path in args.inputs:
        if name is None:
            if len(declared) != 1:
                raise InputError(f"--input {path}: the model has {len(declared)} inputs {declared}; "
                                 "name the one to feed with NAME=FILE.npy")
            name = declared[0]
        if name not in declared:
            raise InputError(f"--input {name}=...: the model has no input {name!r}; its inputs are {declared}")
        given[name] = _load_npy(name, path)

    model = convc.compile(onnx_model, batch=args.batch, threads=args.threads, progress=progress)
    progress(f"compiled {Path(args.model).name}")

    rng = np.random.default_rng(args.seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if spec.name in given:
            feeds[spec.name] = given[spec.name]
            print(f"input  {spec.name!r}: {given[spec.name].dtype} {given[spec.name].shape} from file")
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
            print(f"input  {spec.name!r}: {spec.dtype} {spec.shape} random normal values (seed {args.seed}; "
                  f"give a file with --input {spec.name}=FILE.npy)")

    outputs = model.run(feeds)  # also the warm-up: a new batch size compiles here
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - t0)

    for name, y in outputs.items():
        print(f"output {name!r}: {y.dtype} {y.shape}")
        print(f"  first values: {_format_values(y)}")
        if y.size:
            print(f"  min {y.min():.6g}  max {y.max():.6g}  mean {y.mean():.6g}")
        if y.ndim == 2 and y.shape[1] > 1:
            rows = y.argmax(axis=1).tolist()
            print(f"  argmax per row: {rows[:16]}{' ...' if len(rows) > 16 else ''}")
    ms = [t * 1e3 for t in times]
    print(f"latency: median {statistics.median(ms):.3f} ms, min {min(ms):.3f} ms over {args.repeat} run(s)")

    if out_dir is not None:
        out_dir.mkdir(exist_ok=True)
        for name, file in output_filenames(list(outputs)).items():
            path = out_dir / file
            np.save(path, outputs[name])
            print(f"saved {path}" if file == f"{name}.npy" else f"saved output {name!r} as {path}")
    return EXIT_OK


# --- convc info ----------------------------------------------------------------------------

def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to inspect")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="import with a symbolic batch dimension fixed to N (default: 1)")
    p.add_argument("--dot", metavar="FILE", help="also write the imported graph as Graphviz DOT to FILE")


def _cmd_info(args: argparse.Namespace) -> int:
    from convc.compiler import load_graph
    if args.dot:
        check_output_file(args.dot, "--dot")
    onnx_model = load_onnx(args.model)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onnx_model.opset_import)
    producer = " ".join(x for x in (onnx_model.producer_name, onnx_model.producer_version) if x) or "unknown"
    print(f"model {args.model}: IR version {onnx_model.ir_version}, opsets {opsets}, producer {producer}")
    print(f"  {len(onnx_model.graph.node)} ONNX node(s), {len(onnx_model.graph.initializer)} initializer(s)")
    print("inputs:")
    for vi in _model_inputs(onnx_model):
        print(f"  {vi.name}: {_elem_type(vi)} {_dims(vi)}")
    print("outputs:")
    for vi in onnx_model.graph.output:
        print(f"  {vi.name}: {_elem_type(vi)} {_dims(vi)}")
    graph = load_graph(onnx_model, args.batch)
    print()
    print(graph.dump())
    if args.dot:
        Path(args.dot).write_text(graph.to_dot())
        print(f"\nwrote {args.dot} (render with: dot -Tsvg {args.dot} -o graph.svg)")
    return EXIT_OK


# --- convc example -------------------------------------------------------------------------

def _add_example_args(p: argparse.ArgumentParser) -> None:
    from convc.models import EXAMPLES
    p.add_argument("name", choices=sorted(EXAMPLES), help="which model: " + "; ".join(
        f"{e.name} = {e.summary}" for e in EXAMPLES.values()))
    p.add_argument("--output", "-o", metavar="FILE", help="where to write it (default: NAME.onnx)")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="a fixed batch size (default: a symbolic batch dimension 'N')")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")


def _cmd_example(args: argparse.Namespace) -> int:
    import onnx

    from convc.models import EXAMPLES
    example = EXAMPLES[args.name]
    path = args.output or f"{args.name}.onnx"
    check_output_file(path, "--output")
    model = example.build(batch=args.batch, seed=args.seed)
    onnx.save(model, path)
    print(f"wrote {path}: {example.summary}, seeded random weights (seed {args.seed})")
    for vi in _model_inputs(model):
        print(f"  input  {vi.name}: {_elem_type(vi)} {_dims(vi)}")
    for vi in model.graph.output:
        print(f"  output {vi.name}: {_elem_type(vi)} {_dims(vi)}")
    print(f"run it with: convc run {path}")
    return EXIT_OK


# --- the command table ---------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    help: str          # one line, shown in `convc --help`
    description: str   # shown in `convc NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: tuple[str, ...] = ()


from convc import report as _profile  # the profile subcommand lives with its report
from convc import aot_cli as _aot  # compile (shared library + C header) and cache
from convc import check as _check  # check: what cannot compile, and where the numbers first differ

COMMANDS: list[Command] = [
    Command("run", "compile an ONNX model to native code and run it",
            "Compile MODEL.onnx to native code for this CPU, run it on the given .npy inputs (or on seeded "
            "random inputs), print each output's shape and first values, and time repeated runs.",
            _add_run_args, _cmd_run,
            ("convc run lenet.onnx", "convc run lenet.onnx --batch 8 --repeat 100",
             "convc run model.onnx --input data=x.npy --output-dir out/")),
    Command("info", "show a model's inputs, outputs and imported graph",
            "Print MODEL.onnx's inputs and outputs and the convc graph it imports to (one line per op, with "
            "shapes), optionally writing the graph as Graphviz DOT.",
            _add_info_args, _cmd_info,
            ("convc info lenet.onnx", "convc info lenet.onnx --dot lenet.dot")),
    Command("example", "write a small built-in example model (lenet, cifar) as ONNX",
            "Write a small ready-to-run ONNX model with seeded random weights, so convc can be tried "
            "without downloading anything.",
            _add_example_args, _cmd_example,
            ("convc example lenet -o lenet.onnx", "convc example cifar --batch 4")),
    Command("profile", "per-layer MACs, parameters and memory of a model",
            _profile.DESCRIPTION, _profile.add_arguments, _profile.run,
            ("convc profile resnet50.onnx --top 15", "convc profile model.onnx --by-op",
             "convc profile model.onnx --format csv > layers.csv",
             "convc profile model.onnx --measure --plot profile.svg")),
    Command("compile", "compile an ONNX model ahead of time to a shared library and C header",
            _aot.COMPILE_DESCRIPTION, _aot.add_compile_args, _aot.run_compile,
            ("convc compile lenet.onnx -o lenet.so", "convc compile model.onnx -o model.so --batch 8 --threads 4",
             "convc compile model.onnx -o model.so --target x86-64-v3", "convc compile model.onnx -o model.o")),
    Command("cache", "show or clear the JIT compile cache", _aot.CACHE_DESCRIPTION, _aot.add_cache_args,
            _aot.run_cache, ("convc cache", "convc cache --clear")),
    Command("check", "list the nodes convc cannot compile, or the first layer whose numbers differ from onnxruntime",
            _check.DESCRIPTION, _check.add_arguments, _check.run,
            ("convc check model.onnx", "convc check model.onnx --batch 4 --seed 1 --tolerance 1e-3")),
]


def build_parser() -> argparse.ArgumentParser:
    from convc import __version__
    parser = argparse.ArgumentParser(
        prog="convc",
        description="convc compiles convolutional neural networks (ONNX) ahead of time to native code.",
        epilog="Run 'convc COMMAND --help' for a command's options. Start with:\n"
               "  convc example lenet -o lenet.onnx && convc run lenet.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"convc {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) if cmd.examples else None
        p = sub.add_parser(cmd.name, help=cmd.help, description=textwrap.fill(cmd.description, 79), epilog=epilog,
                           parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd.run)
    return parser


def _fail(message: str) -> int:
    print(f"convc: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convc`` console script and ``python -m convc``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.handler(args)
    except ConvcError as e:
        return _fail(str(e))
    except BrokenPipeError:  # `convc info model.onnx | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except FileNotFoundError as e:
        return _fail(f"{e.filename or e}: no such file")
    except OSError as e:  # permissions, a full disk, a directory where a file was expected
        return _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except KeyboardInterrupt:
        print("convc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
