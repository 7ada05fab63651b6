"""Shared by the tests in tests/aot (and importable by multiprocessing workers, which cannot import
test modules): model files, builds, subprocess runners."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_C = ROOT / "examples" / "c" / "main.c"


def write_model(path: Path, name: str = "lenet", batch: int | None = 2, seed: int = 0) -> Path:
    import onnx

    from convc.models import EXAMPLES
    onnx.save(EXAMPLES[name].build(batch=batch, seed=seed), str(path))
    return path


def inputs_for(model, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(s.dtype) for s in model.inputs]


def env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this checkout importable, plus ``extra``."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), e.get("PYTHONPATH", "")] if p)
    e.update(extra)
    return e


def python(code: str, *, extra_env: dict[str, str] | None = None, timeout: float = 300,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env(**(extra_env or {})), cwd=cwd)


# --- multiprocessing workers (module-level so that spawned processes can import them) -----------

def forbid_compiling() -> None:
    """Pool initializer: any code generation or LLVM run in this worker raises."""
    import convc.codegen.jit as jit
    import convc.codegen.module as module

    def refuse(*args, **kwargs):
        raise AssertionError("a worker compiled: unpickling must load compiled code")
    jit.machine_code = refuse
    jit.JitEngine = refuse
    module.emit_module = refuse


def run_model(model, x: np.ndarray) -> tuple[int, np.ndarray]:
    return os.getpid(), model(x)


def run_pickled_in(args) -> tuple[int, np.ndarray]:
    model, x = args
    return os.getpid(), model(x)
