"""The ``convc`` command line: compile and run ONNX models, inspect them, write example models.

Each subcommand is a module here declaring one ``COMMAND`` (convc/cli/common.py's ``Command``: a
name, its help texts, a function adding its arguments and a function running it); this module
lists them and assembles the parser. Adding a subcommand is one more module and one more name in
``COMMAND_NAMES``. What subcommands share (progress lines, validators, model loading, output-path checks,
the ``convc: error:`` handling) is in convc/cli/common.py; subcommands import that and the library,
never each other or this module.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence

from convc.cli.common import EXIT_ERROR, EXIT_OK, Command, run_handler

# the subcommands in --help order, each the module convc.cli.<name>. `convc run m.onnx` imports only
# convc.cli.run: the others pull in onnx (check, quantize) or the whole compiler (profile), which a
# warm run from the cache never needs (about a second of a 1.7 s warm start)
COMMAND_NAMES = ("run", "info", "example", "profile", "compile", "cache", "check", "quantize")


def commands(names: Sequence[str] = COMMAND_NAMES) -> list[Command]:
    return [importlib.import_module(f"convc.cli.{name}").COMMAND for name in names]


def __getattr__(name: str):
    if name == "COMMANDS":  # every subcommand, imported
        return commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``convc`` parser; ``only``: with that subcommand alone (the others are not imported)."""
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
    for cmd in commands([only] if only else COMMAND_NAMES):
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) if cmd.examples else None
        p = sub.add_parser(cmd.name, help=cmd.help, description=textwrap.fill(cmd.description, 79), epilog=epilog,
                           parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convc`` console script and ``python -m convc``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # options come after the subcommand (only --help and --version go before it)
    parser = build_parser(argv[0] if argv and argv[0] in COMMAND_NAMES else None)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return run_handler(args.handler, args)


__all__ = ["COMMANDS", "COMMAND_NAMES", "EXIT_ERROR", "EXIT_OK", "Command", "build_parser", "commands", "main"]

if __name__ == "__main__":
    sys.exit(main())
