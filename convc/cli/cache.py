"""``convc cache [--clear]``: show or empty the JIT compile cache (convc/codegen/cache.py)."""
from __future__ import annotations

import argparse

from convc.cli.common import EXIT_OK, Command, mb

DESCRIPTION = (
    "Show or clear the JIT compile cache (compiled code and packed weights of models compiled before; "
    "in $CONVC_CACHE_DIR, else $XDG_CACHE_HOME/convc or ~/.cache/convc; CONVC_NO_CACHE=1 turns it off).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clear", action="store_true", help="remove every cached model")


def run(args: argparse.Namespace) -> int:
    from convc.codegen.cache import cache_dir, clear, usage
    root = cache_dir()
    if root is None:
        print("the compile cache is off (CONVC_NO_CACHE is set)")
        return EXIT_OK
    if args.clear:
        print(f"removed {mb(clear(root))} from {root}")
        return EXIT_OK
    n, size = usage(root)
    print(f"{root}: {n} compiled model(s), {mb(size)}")
    return EXIT_OK


COMMAND = Command("cache", "show or clear the JIT compile cache", DESCRIPTION, add_arguments, run,
                  ("convc cache", "convc cache --clear"))
