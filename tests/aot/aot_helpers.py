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


# --- damaging libraries ------------------------------------------------------------------------

def elf_sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """{section name: (file offset, size, address)} of a little-endian ELF64 file."""
    import struct
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    out = {}
    for name, _type, _flags, addr, offset, size, *_ in headers:
        end = data.index(b"\0", names + name)
        out[data[names + name:end].decode()] = (offset, size, addr)
    return out


def elf_symbol(data: bytes, symbol: str) -> tuple[int, int]:
    """(file offset, size) of a symbol of the file's .symtab."""
    import struct
    sections = elf_sections(data)
    symtab, size, _ = sections[".symtab"]
    strtab = sections[".strtab"][0]
    for k in range(size // 24):
        name, _info, _other, shndx, value, sym_size = struct.unpack_from("<IBBHQQ", data, symtab + 24 * k)
        end = data.index(b"\0", strtab + name)
        if data[strtab + name:end].decode() == symbol:
            for offset, sec_size, addr in sections.values():
                if addr and addr <= value < addr + sec_size:
                    return offset + value - addr, sym_size
    raise KeyError(symbol)


def edit_library(path: Path, old: bytes, new: bytes, *, resign: bool) -> None:
    """Replace ``old`` by ``new`` (the same length) in a library; ``resign``: then give it a valid
    integrity trailer again, as if it had been built that way (a library that is whole but lies)."""
    from convc.abi import ABI_VERSION
    from convc.codegen.artifacts import TRAILER_BYTES, sign_library
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, old
    data = data.replace(old, new)
    if resign:
        path.write_bytes(data[:-TRAILER_BYTES])
        sign_library(path, ABI_VERSION)
    else:
        path.write_bytes(data)


LOAD_IN_CHILD = """
import sys
import numpy as np
import convc
try:
    model = convc.load(sys.argv[1])
    x = np.ones(model.inputs[0].shape, model.inputs[0].dtype)
    y = model(x) if isinstance(model, convc.CompiledModel) else model.predict(x)
except convc.ConvcError as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(3)
print("RAN", float(np.asarray(y).sum()))
"""


def load_in_child(path: Path) -> subprocess.CompletedProcess:
    """``convc.load`` and one call in a child Python: exit 3 with the ConvcError on stdout, 0 when it
    ran; killed by a signal (a negative return code) if the library crashes it."""
    return subprocess.run([sys.executable, "-c", LOAD_IN_CHILD, str(path)], capture_output=True, text=True,
                          timeout=120, env=env())


def assert_refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The child exited with a clean ConvcError whose message holds every fragment."""
    assert done.returncode == 3, (f"return code {done.returncode} (negative: killed by signal {-done.returncode})",
                                  done.stdout, done.stderr[-2000:])
    for fragment in fragments:
        assert fragment in done.stdout, (fragment, done.stdout)
    return done.stdout


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
