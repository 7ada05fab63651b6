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


def find_objcopy(target: AotTarget) -> str | None:
    """objcopy (a cross one for another arch), which hides the kernels' names in a relinked object."""
    return shutil.which(f"{target.arch}-linux-gnu-objcopy" if target.is_cross else "objcopy")


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CompileError(f"cannot run {cmd[0]}: {e}") from None
    if done.returncode != 0:
        raise CompileError(f"{what} failed ({' '.join(cmd)}):\n{done.stderr.strip()}")


def link_shared(objs: list[str], lib: str, target: AotTarget, soname: str | None = None,
                hidden: tuple[str, ...] = (), workdir: str | os.PathLike | None = None) -> None:
    """Link object files into a shared library; symbols matching the globs ``hidden`` (the split
    kernels' content names) are not exported, as the single module's internal kernels were not."""
    cc = find_cc(target)
    if cc is None:
        raise CompileError(no_cc_message(target, objs[0], lib))
    # -soname: programs linked against it look for "model.so" (on their rpath), not the build path;
    # -Bsymbolic: its calls to its own functions never bind to another model's library
    cmd = cc + ["-shared", "-o", lib, *objs, f"-Wl,-soname,{soname or Path(lib).name}",
                "-Wl,-Bsymbolic", "-Wl,-z,noexecstack", "-lm", "-lpthread"]
    if hidden:
        script = Path(workdir or Path(lib).parent) / "hidden.map"
        script.write_text("{ local: " + " ".join(f"{g};" for g in hidden) + " };\n")
        cmd.append(f"-Wl,--version-script={script}")
    _run(cmd, f"linking {lib}")


def relink_object(objs: list[str], out: Path, target: AotTarget, hidden: tuple[str, ...] = ()) -> None:
    """Object files as one relocatable object (``cc -r``), the symbols matching ``hidden`` made
    local to it (objcopy), written atomically to ``out``. Needs ``find_cc`` and ``find_objcopy``."""
    cc, objcopy = find_cc(target), find_objcopy(target)
    if cc is None or objcopy is None:
        raise CompileError(f"writing {out} from several object files needs a C compiler and objcopy")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _run(cc + ["-r", "-nostdlib", "-o", str(tmp), *objs], f"linking {out}")
        if hidden:
            _run([objcopy, "--wildcard", *(f"--localize-symbol={g}" for g in hidden), str(tmp)], f"writing {out}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_library(obj: bytes | list[bytes], out: Path, target: AotTarget, workdir: str | os.PathLike,
                  hidden: tuple[str, ...] = ()) -> None:
    """Link the object code ``obj`` (one object file, or several with the symbols ``hidden`` kept
    inside the library) into the library ``out``, signed for convc.load and replaced atomically.
    Without a C compiler one object is kept beside ``out`` and a CompileError says what is
    missing and how to link it."""
    objs = [obj] if isinstance(obj, (bytes, bytearray)) else list(obj)
    if find_cc(target) is None:
        if len(objs) != 1:
            raise CompileError(no_cc_message(target, str(out.with_suffix(".o")), str(out)))
        kept = out.with_suffix(".o")
        atomic_write(kept, objs[0])
        raise CompileError(no_cc_message(target, str(kept), str(out)))
    paths = []
    for k, data in enumerate(objs):
        paths.append(Path(workdir) / (f"{out.stem}.o" if len(objs) == 1 else f"part{k}.o"))
        paths[-1].write_bytes(data)
    tmp_lib = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        link_shared([str(p) for p in paths], str(tmp_lib), target, soname=out.name, hidden=hidden, workdir=workdir)
        sign_library(tmp_lib, abi.ABI_VERSION)  # convc.load checks it before dlopen
        os.replace(tmp_lib, out)
    finally:
        if tmp_lib.exists():
            tmp_lib.unlink()
