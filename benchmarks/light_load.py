"""CPU time and imported modules of a fresh process that only loads compiled code.

    python benchmarks/light_load.py [--rounds 5] [--tree OTHER_TREE ...]

Each case runs in a new Python (what a Ray or Dask worker, or a CLI call, pays on its first task):
- unpickle: unpickle the CIFAR CNN compiled with ``batch=None`` and run it once;
- warm compile: ``convc.compile`` of the CIFAR CNN's ONNX file, a compile-cache hit, and one run;
- convc run: the CLI, warm (the same cache);
- load: ``convc.load`` of the AOT library and one run.
The figure is the child's whole CPU time (``RUSAGE_CHILDREN``: interpreter start, imports, work),
not wall time, so it holds up on a loaded machine; rounds alternate between the trees.

``--tree DIR`` also measures another convc source tree laid out as an importable package
(``DIR/convc`` with ``codegen``, ``frontend`` and ``passes`` inside it), e.g. an older commit:
``git archive <rev> | tar -x -C /tmp/old`` then copy those folders into ``/tmp/oldpkg/convc``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPORT = "import sys; print('MODULES', len(sys.modules))"

CASES = {
    "unpickle": """
import pickle, numpy as np
m = pickle.loads(open({pkl!r}, "rb").read())
m(np.load({x!r}))
""",
    "warm compile": """
import numpy as np, convc
m = convc.compile({onnx!r}, batch=None)
m(np.load({x!r}))
""",
    "load": """
import numpy as np, convc
convc.load({lib!r})(np.load({x!r}))
""",
}


def child(code: str, env: dict, argv: list[str] | None = None) -> tuple[float, int | None]:
    """(CPU seconds, modules imported) of one fresh Python running ``code`` (or ``argv``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = argv if argv else [sys.executable, "-c", code + "\n" + REPORT]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-2000:]}")
    mods = next((int(x.split()[1]) for x in done.stdout.splitlines() if x.startswith("MODULES ")), None)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), mods


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tree", action="append", default=[], help="another convc package tree to measure too")
    args = p.parse_args()

    import numpy as np
    import onnx

    import convc
    from convc.compiler import build
    work = Path(tempfile.mkdtemp(prefix="convc-light-"))
    files = {"onnx": str(work / "cifar.onnx"), "pkl": str(work / "cifar.pkl"), "lib": str(work / "cifar.so"),
             "x": str(work / "x.npy")}
    onnx.save(convc.models.cifar_cnn(), files["onnx"])
    np.save(files["x"], np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    os.environ["CONVC_CACHE_DIR"] = str(work / "cache")
    os.environ.pop("CONVC_NO_CACHE", None)
    Path(files["pkl"]).write_bytes(pickle.dumps(convc.compile(files["onnx"], batch=None)))
    build(files["onnx"], files["lib"], batch=1)
    os.chdir(work)  # ``python -c`` puts the working directory first on sys.path: not a source checkout

    trees = {"this tree": dict(os.environ)}
    for t in args.tree:
        trees[t] = {**os.environ, "PYTHONPATH": t}
    cases = {name: (code.format(**files), None) for name, code in CASES.items()}
    cases["convc run"] = (None, [sys.executable, "-m", "convc", "run", files["onnx"], "--quiet"])
    for env in trees.values():  # each tree's compile cache entry (its code fingerprint differs)
        child(cases["warm compile"][0], env)
        child(None, env, cases["convc run"][1])
    cpu: dict = {(t, c): [] for t in trees for c in cases}
    mods: dict = {}
    for _ in range(args.rounds):
        for c, (code, argv) in cases.items():
            for t, env in trees.items():
                s, n = child(code, env, argv)
                cpu[t, c].append(s)
                mods[t, c] = n
    print("CPU seconds of a fresh process (median of", args.rounds, "rounds; rusage of the child), modules imported")
    for c in cases:
        for t in trees:
            n = mods[t, c]
            print(f"  {c:13s} {t:24s} {statistics.median(cpu[t, c]):6.3f} s  "
                  f"(min {min(cpu[t, c]):.3f})  {'' if n is None else f'{n} modules'}")


if __name__ == "__main__":
    main()
