"""Compile time: convc's cold and warm compile to first inference, next to onnxruntime's session creation
and OpenVINO's compile_model, each in a fresh process.

    python benchmarks/compile.py [--models resnet50,densenet121,...] [--threads 2] [--rounds 1] [--train]

For every model and runtime a new process loads the runtime, compiles the model from its file and runs
it once; the time is from the start of compiling to the first result (the runtime's import is not
counted: for convc that includes the onnx package, about 1.2 s on a 2-core VM, 0.8 s of it the
ml_dtypes extension onnx imports, which ``convc run`` pays on a cold start). convc runs three times
against one fresh, empty cache directory: ``cold`` (nothing cached),
``warm`` (the same model again: the cache's whole-model entry), and, for ResNet-101, ``after r50``:
compiled right after ResNet-50 into the same cache (the same block shapes), what a kernel-level cache
shares between models. convc's cold time is split by stage from its ``progress`` lines: import,
graph passes, IR emission in Python (with weight packing and the module split; LLVM's workers already
compile the kernels written so far meanwhile), LLVM (what is left to compile once the model is
written, on every core), storing the cache entry (and loading the code, running once). A large
model's entry (32 MB and more) is written on a thread after the compile returns (codegen/cache.py), so
the time to the first result does not include it; ``--phases`` writes it in line and counts its CPU.

Models: ResNet-50, ResNet-101, DenseNet-121, MobileNetV2, EfficientNet-B0 (built by benchmarks/nets.py,
random weights) and the light models shipped with the onnx package (their weights generated at load).
``--train`` adds the cold compile of a training step (a CIFAR ResNet, width 16, batch 32).

``--phases`` prints instead where the CPU time of a cold compile goes, phase by phase (import, graph
passes, IR emission in Python, weight packing, module split, LLVM, cache store, loading and the first
run), for each model, ResNet-101 right after ResNet-50, and with ``--train`` the training step. It
compiles with ``CONVC_COMPILE_JOBS=1`` so that LLVM's CPU is this process's (with workers it is spread
over the cores and the wall time is shorter); time is ``time.process_time``, meaningful under load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BUILT = ("resnet50", "resnet101", "densenet121", "mobilenet_v2", "efficientnet_b0")
LIGHT = ("squeezenet", "inception_v1", "densenet121", "resnet50", "vgg19")
DEFAULT = "resnet50,resnet101,densenet121,mobilenet_v2,efficientnet_b0,light_squeezenet,light_inception_v1"
STAGES = ("import", "passes", "IR emission", "LLVM", "cache store")


def model_file(name: str, tmp: str) -> str:
    """The model as an ONNX file."""
    import onnx
    path = os.path.join(tmp, name + ".onnx")
    if os.path.exists(path):
        return path
    if name.startswith("light_"):
        # weights as ConstantOfShape nodes, initializers listed as graph inputs (IR version 3)
        src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", name + ".onnx")
        model = onnx.load(src)
    else:
        import nets
        model = getattr(nets, name)(1)
    onnx.save(model, path)
    return path


def onnx_model(path: str):
    import onnx
    return onnx.load(path)


def _stage(line: str) -> str:
    if line.startswith("import"):
        return "import"
    if line.startswith(("code generation", "codegen", "module split")):
        return "IR emission"
    if line.startswith(("compile cache: stor", "loading")):  # the entry's writing, then loading the objects
        return "cache store"
    if line.startswith("LLVM"):  # optimization and machine code, module by module on every core
        return "LLVM"
    return "passes"


def worker(runtime: str, path: str, threads: int) -> dict:
    import numpy as np
    if runtime == "convc":
        import convc
        import convc.frontend.onnx  # noqa: F401  convc's import, with the onnx package it reads models with
        marks: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        compiled = convc.compile(path, threads=threads, batch=1,
                                 progress=lambda s: marks.append((time.perf_counter(), _stage(s))))
        spec = compiled.inputs[0]
        compiled.run({spec.name: np.zeros(spec.shape, np.float32)})
        end = time.perf_counter()
        stages = dict.fromkeys(STAGES, 0.0)
        for (t, stage), nxt in zip(marks, [m[0] for m in marks[1:]] + [end]):
            stages[stage] += nxt - t
        return {"seconds": end - t0, "stages": stages}
    if runtime == "ort":
        import onnxruntime as ort
        inits = {i.name for i in onnx_model(path).graph.initializer}  # which input to feed: not timed
        t0 = time.perf_counter()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        i = next(i for i in sess.get_inputs() if i.name not in inits)
        sess.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)})
        return {"seconds": time.perf_counter() - t0}
    import openvino as ov
    core = ov.Core()
    t0 = time.perf_counter()
    compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
    shape = [d.get_length() if d.is_static else 1 for d in compiled.inputs[0].get_partial_shape()]
    compiled.create_infer_request().infer([np.zeros(shape, np.float32)])
    return {"seconds": time.perf_counter() - t0}


def train_worker(threads: int) -> dict:
    import numpy as np
    import convc
    from convc import nn
    from convc.models import cifar_resnet

    nn.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    y = np.arange(32) % 10
    t0 = time.perf_counter()
    trainer = convc.Trainer(cifar_resnet(16), input_shape=x.shape, threads=threads)
    trainer.step(x, y)
    return {"seconds": time.perf_counter() - t0}


# (module, attribute, phase): the functions a cold compile spends its time in; a nested call's time is
# its own phase's (weight packing inside IR emission), the rest of the compile is "other"
PHASE_FUNCTIONS = (
    ("convc.driver", "load_shaped", "import"),
    ("convc.train", "load_forward", "import"),
    ("convc.passes.pipeline", "pipeline", "passes"),
    ("convc.train", "build_training", "training graph"),
    ("convc.codegen.cache_key", "source_key", "cache lookup"),
    ("convc.codegen.cache", "lookup", "cache lookup"),
    ("convc.codegen.module", "emit_module", "IR emission"),
    ("convc.codegen.kernels.conv", "pack_a", "weight packing"),
    ("convc.codegen.kernels.conv_transpose", "pack_a", "weight packing"),
    ("convc.codegen.kernels.gemm", "pack_b", "weight packing"),
    ("convc.codegen.kernels.conv_nhwc", "pack_b", "weight packing"),
    ("convc.codegen.kernels.winograd", "packed_weights", "weight packing"),
    ("convc.codegen.split", "Splitter.add", "module split"),  # kernel by kernel, inside IR emission
    ("convc.codegen.split", "Splitter.finish", "module split"),
    ("convc.codegen.cache", "split_module", "module split"),
    ("convc.codegen.llvm_pool", "ModuleCompiler.add", "LLVM"),  # kernel cache lookups; with one job
    ("convc.codegen.llvm_pool", "ModuleCompiler.finish", "LLVM"),  # every module compiles in finish
    ("convc.codegen.cache", "compile_modules", "LLVM"),
    ("convc.codegen.cache", "store", "cache store"),
    ("convc.codegen.entry", "engine_for", "object load"),
)
PHASES = tuple(dict.fromkeys(p for *_, p in PHASE_FUNCTIONS)) + ("other",)


def timed_phases() -> dict[str, float]:
    """Wrap PHASE_FUNCTIONS so that their CPU time adds up, per phase, in the dict returned."""
    import functools
    import importlib
    totals = dict.fromkeys(PHASES, 0.0)
    stack = [["other", time.process_time()]]

    def wrap(fn, phase):
        @functools.wraps(fn)
        def timed(*a, **k):
            now = time.process_time()
            totals[stack[-1][0]] += now - stack[-1][1]
            stack.append([phase, now])
            try:
                return fn(*a, **k)
            finally:
                now = time.process_time()
                totals[phase] += now - stack.pop()[1]
                stack[-1][1] = now
        return timed
    for module, name, phase in PHASE_FUNCTIONS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue  # a function that moved is counted as "other"
        *owner, attr = name.split(".")  # a function, or Class.method
        for part in owner:
            mod = getattr(mod, part, None)
        if mod is not None and hasattr(mod, attr):
            setattr(mod, attr, wrap(getattr(mod, attr), phase))

    def close() -> dict[str, float]:
        now = time.process_time()
        totals["other"] += now - stack[0][1]
        stack[0][1] = now
        return dict(totals)
    return close


def phases_worker(names: list[str], threads: int) -> dict:
    """CPU seconds per phase of each model's cold compile to its first result, one after the other
    in this process and one cache (so ResNet-101 after ResNet-50 reuses its kernels)."""
    import numpy as np
    import convc
    import convc.frontend.onnx  # noqa: F401
    import convc.train  # noqa: F401
    from convc.codegen import cache
    # a large model's entry is written on a thread after the compile returns: written in line here,
    # so that its CPU is the cache store's and not that of whatever phase runs meanwhile
    cache.store_in_background = lambda name, write: write()
    out, close = {}, timed_phases()
    for name in names:
        start, before = time.process_time(), close()
        if name == "train":
            train_worker(threads)
        else:
            compiled = convc.compile(name, threads=threads, batch=1)
            spec = compiled.inputs[0]
            compiled.run({spec.name: np.zeros(spec.shape, np.float32)})
        after = close()
        out[os.path.basename(name)] = {"seconds": time.process_time() - start,
                                       "phases": {p: after[p] - before[p] for p in PHASES}}
    return out


def print_phases(names: list[str], threads: int, train: bool) -> None:
    runs = [[n] for n in names if n != "resnet101"]
    if "resnet101" in names:
        runs += [["resnet101"], ["resnet50", "resnet101"]]
    if train:
        runs.append(["train"])
    print(f"CPU seconds of a cold compile to the first result, by phase; {threads} threads, one LLVM job")
    print(f"{'model':<22}{'total':>7}" + "".join(f"{p[:11]:>12}" for p in PHASES))
    with tempfile.TemporaryDirectory() as tmp:
        for run_names in runs:
            cache = tempfile.mkdtemp(dir=tmp)
            os.chmod(cache, 0o700)
            paths = [n if n == "train" else model_file(n, tmp) for n in run_names]
            env = {"CONVC_COMPILE_JOBS": "1"}
            res = run(["phases", str(threads), *paths], cache, env)
            if "error" in res:
                print(f"{' after '.join(reversed(run_names)):<22} {res['error']}", flush=True)
                continue
            r = res[os.path.basename(paths[-1])]
            label = run_names[-1] + (" after " + run_names[0] if len(run_names) > 1 else "")
            print(f"{label:<22}{r['seconds']:>7.2f}" + "".join(f"{r['phases'][p]:>12.2f}" for p in PHASES),
                  flush=True)


def run(args: list[str], cache: str | None, extra_env: dict | None = None) -> dict:
    env = dict(os.environ, **(extra_env or {}))
    if cache:
        env["CONVC_CACHE_DIR"] = cache
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        if sys.argv[2] == "phases":
            print(json.dumps(phases_worker(sys.argv[4:], int(sys.argv[3]))))
        elif sys.argv[2] == "train":
            print(json.dumps(train_worker(int(sys.argv[3]))))
        else:
            print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT, help=f"comma-separated: {', '.join(BUILT)}, light_<name> "
                                                      f"({', '.join(LIGHT)})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repetitions (medians are printed)")
    p.add_argument("--train", action="store_true", help="also time a cold training-step compile")
    p.add_argument("--phases", action="store_true", help="CPU time by phase of each cold compile instead")
    args = p.parse_args()
    if args.phases:
        print_phases(args.models.split(","), args.threads, args.train)
        return 0
    try:
        import openvino  # noqa: F401
        peers = ["ort", "ov"]
    except ImportError:
        peers = ["ort"]
    names = args.models.split(",")
    print(f"seconds to first inference, {args.threads} threads, median of {args.rounds}; convc's cold time by stage")
    print(f"{'model':<20}{'cold':>7}{'warm':>7}{'after r50':>10}" + "".join(f"{p:>8}" for p in peers)
          + "   " + " / ".join(STAGES))
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, dict[str, list]] = {}
        for _ in range(args.rounds):
            for name in names:
                path = model_file(name, tmp)
                r = results.setdefault(name, {"cold": [], "warm": [], "after": [], "stages": [],
                                              **{p: [] for p in peers}})
                cache = tempfile.mkdtemp(dir=tmp)
                os.chmod(cache, 0o700)
                cold = run(["convc", path, str(args.threads)], cache)
                warm = run(["convc", path, str(args.threads)], cache)
                if "error" in cold or "error" in warm:
                    print(f"{name:<20} convc: {cold.get('error') or warm.get('error')}", flush=True)
                    continue
                r["cold"].append(cold["seconds"])
                r["warm"].append(warm["seconds"])
                r["stages"].append(cold["stages"])
                if name == "resnet101":
                    cache = tempfile.mkdtemp(dir=tmp)
                    os.chmod(cache, 0o700)
                    run(["convc", model_file("resnet50", tmp), str(args.threads)], cache)
                    after = run(["convc", path, str(args.threads)], cache)
                    if "seconds" in after:
                        r["after"].append(after["seconds"])
                for peer in peers:
                    res = run([peer, path, str(args.threads)], None)
                    if "seconds" in res:
                        r[peer].append(res["seconds"])
        for name, r in results.items():
            if not r["cold"]:
                continue
            med = {k: statistics.median(v) for k, v in r.items() if v and k != "stages"}
            stages = {s: statistics.median(st[s] for st in r["stages"]) for s in STAGES}
            after = f"{med['after']:.2f}" if "after" in med else "-"
            print(f"{name:<20}{med['cold']:>7.2f}{med['warm']:>7.2f}{after:>10}"
                  + "".join(f"{med[p]:>8.2f}" if p in med else f"{'-':>8}" for p in peers)
                  + "   " + " / ".join(f"{stages[s]:.2f}" for s in STAGES), flush=True)
        if args.train:
            cache = tempfile.mkdtemp(dir=tmp)
            os.chmod(cache, 0o700)
            res = run(["train", str(args.threads)], cache)
            print(f"training step, CIFAR ResNet width 16, batch 32, cold: "
                  f"{res['seconds']:.2f} s" if "seconds" in res else f"training step: {res['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
