"""What the ``convc`` subcommands share: exit codes, the ``Command`` record, progress lines,
argument validators, reading a model, describing its inputs and outputs, output-path checks and the
``convc: error: ...`` handling.

The subcommand modules (convc/cli/<command>.py) import from here and from the library, never from
each other or from the package's ``__init__`` (tests/test_cli_layering.py checks this).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convc.errors import ConvcError, InputError

EXIT_OK = 0
EXIT_ERROR = 2  # what argparse uses for usage errors; convc errors share it
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """One subcommand: each convc/cli/<command>.py declares its ``COMMAND``."""
    name: str
    help: str          # one line, shown in `convc --help`
    description: str   # shown in `convc NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: tuple[str, ...] = ()


# --- progress ------------------------------------------------------------------------------

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


# --- argument validators -------------------------------------------------------------------

def positive(text: str) -> int:
    """argparse ``type=`` for counts (batch, repeats, threads, top N)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def add_winograd_flag(p: argparse.ArgumentParser) -> None:
    """``--no-winograd``: the CompileOptions field ``winograd`` (convc/options.py) off."""
    p.add_argument("--no-winograd", dest="winograd", action="store_false",
                   help="run every 3x3 stride-1 conv with the direct kernel instead of Winograd F(2x2,3x3) or "
                        "F(4x4,3x3), which kernel selection picks where it measured faster (its outputs differ "
                        "from the direct conv's by up to ~1e-5 relative)")


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    """``--precision``: the CompileOptions field ``precision`` (convc/options.py)."""
    from convc.options import PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="arithmetic of convs and matrix products: float32 (default) or bf16 (operands rounded to "
                        "bf16, products summed in float32; outputs move by ~1e-3 relative, convc check "
                        "--precision bf16 measures it; bf16 runs 3x3 convs without Winograd)")


def input_shape_spec(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse ``type=`` for ``--input-shape NAME=d0,d1,...`` (``x=1,3,512,512``)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=d0,d1,... such as x=1,3,224,224, got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the dimensions of input {name!r} must be integers separated by "
                                         "commas, such as 1,3,224,224") from None
    bad = [i for i, d in enumerate(shape) if d < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: dimension {bad[0]} of input {name!r} is {shape[bad[0]]}; every "
                                         "dimension must be a positive integer")
    return name, shape


def add_input_shape_flag(p: argparse.ArgumentParser) -> None:
    """``--input-shape NAME=d0,d1,...``: ``input_shapes=`` of a compile (frontend/onnx/signature.py)."""
    p.add_argument("--input-shape", dest="input_shapes", action="append", type=input_shape_spec, default=[],
                   metavar="NAME=d0,d1,...",
                   help="fix the shape of input NAME, its symbolic dimensions included (e.g. x=1,3,512,512 for a "
                        "model declared [N, 3, H, W]), or the size of a symbolic dimension by name in every input "
                        "declaring it (H=512); repeatable; must agree with the model's fixed dimensions and --batch")


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    """``--input-shape`` as the ``input_shapes`` keyword of a compile (None when not given)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in getattr(args, "input_shapes", None) or ():
        if name in shapes and shapes[name] != shape:
            raise InputError(f"--input-shape gives input {name!r} two shapes: {shapes[name]} and {shape}")
        shapes[name] = shape
    return shapes or None


def numeric_options(args: argparse.Namespace) -> dict:
    """The ``winograd`` and ``precision`` keywords of a compile from ``--no-winograd`` and ``--precision``:
    with --precision bf16 and no --no-winograd, Winograd is left to the options' default for bf16 (off)."""
    winograd = None if args.winograd and args.precision == "bf16" else args.winograd
    return {"winograd": winograd, "precision": args.precision}


# --- models --------------------------------------------------------------------------------

def load_onnx(path: str):
    """Read an ONNX file (external data confined to its directory); ModelImportError for anything unreadable."""
    from convc.frontend.onnx.reader import read_model
    return read_model(path)


def dims(value_info) -> str:
    """An ONNX value's shape as text: ``[N, 1, 28, 28]`` (symbolic dimensions by name, unknown as ?)."""
    d = value_info.type.tensor_type.shape.dim
    return "[" + ", ".join(str(x.dim_value) if x.HasField("dim_value") else (x.dim_param or "?")
                           for x in d) + "]"


def elem_type(value_info) -> str:
    """An ONNX value's element type as a numpy dtype name (``?`` when undeclared)."""
    import onnx
    t = value_info.type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(t).name if t else "?"


def model_inputs(model) -> list:
    """The graph inputs a caller feeds (initializers listed as inputs are weights, not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_spec(text: str) -> tuple[str | None, str]:
    """argparse ``type=`` for ``--input NAME=FILE.npy`` (or a plain FILE.npy: name None)."""
    name, sep, path = text.partition("=")
    if not sep:
        return None, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


def load_npy(name: str, path: str):
    import numpy as np
    if not Path(path).exists():
        raise FileNotFoundError(2, "no such file", path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"input {name!r}: cannot read {path} as a .npy array ({e})") from None


def given_inputs(model, specs: list[tuple[str | None, str]]) -> dict:
    """The arrays ``--input`` gives (``input_spec`` pairs), by graph input name: a plain FILE.npy only
    for a model with one input; a name the model does not have is an InputError naming its inputs."""
    declared = [i.name for i in model_inputs(model)]
    given = {}
    for name, path in specs:
        if name is None:
            if len(declared) != 1:
                raise InputError(f"--input {path}: the model has {len(declared)} inputs {declared}; "
                                 "name the one to feed with NAME=FILE.npy")
            name = declared[0]
        if name not in declared:
            raise InputError(f"--input {name}=...: the model has no input {name!r}; its inputs are {declared}")
        given[name] = load_npy(name, path)
    return given


def mb(n: int) -> str:
    """A size in MB, or kB below 0.1 MB, or GB from 1 GB."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# --- output paths --------------------------------------------------------------------------

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


# --- errors --------------------------------------------------------------------------------

def fail(message: str) -> int:
    """Print one ``convc: error: ...`` line to stderr; the exit code of a failed command."""
    print(f"convc: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning convc's errors and the OS's into one ``convc: error:`` line and exit code 2."""
    try:
        return handler(args)
    except ConvcError as e:
        return fail(str(e))
    except BrokenPipeError:  # `convc info model.onnx | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except FileNotFoundError as e:
        return fail(f"{e.filename or e}: no such file")
    except OSError as e:  # permissions, a full disk, a directory where a file was expected
        return fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except KeyboardInterrupt:
        print("convc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
