"""The ``convc`` command line: compile and run ONNX models, inspect them, write example models.

Each subcommand is a module here declaring one ``COMMAND`` (convc/cli/common.py's ``Command``: a
name, its help texts, a function adding its arguments and a function running it); this module
lists them and assembles the parser. Adding a subcommand is one more module and one more entry in
``COMMANDS``. What subcommands share (progress lines, validators, model loading, output-path checks,
the ``convc: error:`` handling) is in convc/cli/common.py; subcommands import that and the library,
never each other or this module.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from convc.cli import cache, check, compile, example, info, profile, quantize, run
from convc.cli.common import EXIT_ERROR, EXIT_OK, Command, run_handler

COMMANDS: list[Command] = [
    run.COMMAND,
    info.COMMAND,
    example.COMMAND,
    profile.COMMAND,
    compile.COMMAND,
    cache.COMMAND,
    check.COMMAND,
    quantize.COMMAND,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convc`` console script and ``python -m convc``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return run_handler(args.handler, args)


__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_OK", "Command", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
