"""Linking an object file into a shared library with the system's C compiler driver.

The object needs no C compiler (codegen/wrapper.py writes the C ABI in LLVM IR); ``cc -shared`` only
links it against libc, libm and pthreads.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from convc.codegen.artifacts import atomic_write, sign_library
from convc.codegen.target import AotTarget

from convc import abi
from convc.errors import CompileError


def find_cc(target: AotTarget) -> list[str] | None:
    """The C compiler driver that links the library: $CC, else cc/gcc/clang (a cross gcc for another arch)."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    names = [f"{target.arch}-linux-gnu-gcc"] if target.is_cross else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name)
        if path:
            return [path]
    if target.is_cross and shutil.which("clang"):
        return [shutil.which("clang"), f"--target={target.triple}", "-fuse-ld=lld"]
    return None


def no_cc_message(target: AotTarget, obj: str, lib: str) -> str:
    cross = target.is_cross
    what = (f"a cross C toolchain for {target.arch} (Debian/Ubuntu: apt-get install gcc-{target.arch}-linux-gnu)"
            if cross else "a C compiler (Debian/Ubuntu: apt-get install gcc; Fedora/RHEL: dnf install gcc; "
                          "Alpine: apk add gcc musl-dev; macOS: xcode-select --install)")
    cc = f"{target.arch}-linux-gnu-gcc" if cross else "cc"
    return (f"linking {lib} needs {what}, or set CC to one. The object file was written to {obj}: "
            f"link it yourself with `{cc} -shared -o {lib} {obj} -lm -lpthread`, or ask for the object "
            f"only with -o {Path(lib).with_suffix('.o').name}")


def link_shared(obj: str, lib: str, target: AotTarget, soname: str | None = None) -> None:
    cc = find_cc(target)
    if cc is None:
        raise CompileError(no_cc_message(target, obj, lib))
    # -soname: programs linked against it look for "model.so" (on their rpath), not the build path;
    # -Bsymbolic: its calls to its own functions never bind to another model's library
    cmd = cc + ["-shared", "-o", lib, obj, f"-Wl,-soname,{soname or Path(lib).name}",
                "-Wl,-Bsymbolic", "-Wl,-z,noexecstack", "-lm", "-lpthread"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CompileError(f"cannot run the C compiler {cc[0]}: {e}") from None
    if done.returncode != 0:
        raise CompileError(f"linking {lib} failed ({' '.join(cmd)}):\n{done.stderr.strip()}")


def write_library(obj: bytes, out: Path, target: AotTarget, workdir: str | os.PathLike) -> None:
    """Link the object code ``obj`` into the library ``out``, signed for convc.load and replaced
    atomically. Without a C compiler the object is kept beside ``out`` and a CompileError says
    what is missing and how to link it."""
    if find_cc(target) is None:
        kept = out.with_suffix(".o")
        atomic_write(kept, obj)
        raise CompileError(no_cc_message(target, str(kept), str(out)))
    obj_path = Path(workdir) / (out.stem + ".o")
    obj_path.write_bytes(obj)
    tmp_lib = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        link_shared(str(obj_path), str(tmp_lib), target, soname=out.name)
        sign_library(tmp_lib, abi.ABI_VERSION)  # convc.load checks it before dlopen
        os.replace(tmp_lib, out)
    finally:
        if tmp_lib.exists():
            tmp_lib.unlink()
