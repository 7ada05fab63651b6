"""``convc cache [--list] [--prune] [--clear]``: show, list, prune or empty the JIT compile cache
(convc/codegen/cache.py)."""
from __future__ import annotations

import argparse
import time

from convc.cli.common import EXIT_OK, Command, fail, mb

DESCRIPTION = (
    "Show, list, prune or clear the JIT compile cache: compiled code and packed weights of models compiled "
    "before, and the kernel objects every model shares (in $CONVC_CACHE_DIR, else $XDG_CACHE_HOME/convc or "
    "~/.cache/convc; CONVC_NO_CACHE=1 turns it off). The cache keeps itself under a size limit "
    "(CONVC_CACHE_MAX_BYTES, default 4G: 4 GB) by removing what was used least recently.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true",
                      help="one line per compiled model (name, inputs, size, age, last use), then the kernel objects")
    what.add_argument("--prune", action="store_true",
                      help="remove the least recently used models and kernels until the cache fits its size limit")
    what.add_argument("--clear", action="store_true", help="remove every cached model and kernel")
    p.add_argument("--max-size", metavar="SIZE",
                   help="with --prune: the size to prune to (e.g. 2G, 500M; default CONVC_CACHE_MAX_BYTES or 4G)")


def _shown(text: str) -> str:
    """A name from a model as printed text: characters that are not printable (a terminal escape in
    a hostile graph name) are written as escapes, not sent to the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "?"
    s = max(0.0, now - t)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def run(args: argparse.Namespace) -> int:
    from convc.codegen.cache import cache_dir
    from convc.codegen.cache_limit import cached_files, clear, max_bytes, parse_size, prune, usage
    limit = None
    if args.max_size is not None:
        if not args.prune:
            return fail("--max-size goes with --prune (the limit of every compile is CONVC_CACHE_MAX_BYTES)")
        try:
            limit = parse_size(args.max_size)
        except ValueError as e:
            return fail(f"--max-size: {e}")
    root = cache_dir()
    if root is None:
        print("the compile cache is off (CONVC_NO_CACHE is set)")
        return EXIT_OK
    if args.clear:
        print(f"removed {mb(clear(root))} from {root}")
        return EXIT_OK
    if args.prune:
        removed, freed = prune(root, limit)
        n, size = usage(root)
        print(f"removed {removed} file(s), {mb(freed)}; {root} now holds {n} compiled model(s), {mb(size)} "
              f"(limit {mb(limit if limit is not None else max_bytes())})")
        return EXIT_OK
    if args.list:
        now = time.time()
        items = cached_files(root, describe=True)
        models = sorted((i for i in items if i.kind == "model"), key=lambda i: -i.last_use)
        kernels = [i for i in items if i.kind == "kernel"]
        rows = [("model", "inputs", "size", "age", "last use")]
        rows += [(_shown(i.name), _shown(i.inputs), mb(i.size), _ago(i.created, now), _ago(i.last_use, now))
                 for i in models]
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if kernels:
            print(f"kernel objects: {len(kernels)}, {mb(sum(i.size for i in kernels))} "
                  f"(last use {_ago(max(i.last_use for i in kernels), now)})")
    n, size = usage(root)
    print(f"{root}: {n} compiled model(s), {mb(size)} of {mb(max_bytes())}")
    return EXIT_OK


COMMAND = Command("cache", "show, list, prune or clear the JIT compile cache", DESCRIPTION, add_arguments, run,
                  ("convc cache", "convc cache --list", "convc cache --prune --max-size 2G", "convc cache --clear"))
