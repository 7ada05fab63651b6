"""A library built for CPU features this machine lacks, or for another convc ABI, is refused before
any of its kernels runs (a clean error, never SIGILL)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest
from aot_helpers import EXAMPLE_C, python

import convc
from convc import abi
from convc import compiler as aot  # build: the AOT entry point
from convc.codegen.jit import Target

HOST = Target.host()
have = {f[1:] for f in HOST.features.split(",") if f.startswith("+")}
# features this machine lacks (a Zen 4 has neither), checked by CPUID in the library
LACKING = [f for f in ("avx512fp16", "amx-tile", "avx512vp2intersect", "amx-int8") if f not in have][:2]

pytestmark = [pytest.mark.skipif(not HOST.triple.startswith("x86_64"), reason="x86-64 CPUID check"),
              pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler"),
              pytest.mark.skipif(len(LACKING) < 1, reason="this CPU has every feature we could fake")]


@pytest.fixture(scope="module")
def foreign_lib(lenet_file, tmp_path_factory):
    spec = ",".join(["x86-64-v3", *("+" + f for f in LACKING)])
    return aot.build(str(lenet_file), tmp_path_factory.mktemp("foreign") / "model.so", target=spec, threads=2)


def test_the_check_passes_for_this_cpu(lenet_lib):
    lib = ctypes.CDLL(str(lenet_lib.output))
    assert lib.convc_check_cpu() == 0
    lib.convc_cpu_features.restype = ctypes.c_char_p
    assert "avx2" in lib.convc_cpu_features().decode().split(",")  # a native build records the host's features


def test_missing_features_fail_cleanly_in_python(foreign_lib):
    with pytest.raises(convc.LoadError) as e:
        convc.load(foreign_lib.output)
    msg = str(e.value)
    for f in LACKING:
        assert f in msg
    assert "--target x86-64-v3" in msg and "illegal instruction" in msg
    # the C ABI refuses too: no context, so no kernel can run
    lib = ctypes.CDLL(str(foreign_lib.output))
    lib.convc_create.restype = ctypes.c_void_p
    assert lib.convc_check_cpu() == len(LACKING)
    assert lib.convc_create(0) is None


def test_missing_features_fail_cleanly_in_a_subprocess(foreign_lib):
    """Even run for real: the process exits with the error, not a signal."""
    done = python(f"import convc\nconvc.load({str(foreign_lib.output)!r})")
    assert done.returncode == 1 and "LoadError" in done.stderr and LACKING[0] in done.stderr


def test_missing_features_fail_cleanly_in_c(foreign_lib):
    folder = foreign_lib.output.parent
    exe = folder / "demo"
    made = subprocess.run(["cc", "-O2", "-o", str(exe), str(EXAMPLE_C), f"-I{folder}", str(foreign_lib.output),
                           f"-Wl,-rpath,{folder}"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    assert "lacks features" in ran.stderr and LACKING[0] in ran.stderr


def test_metadata_functions_are_baseline_code(foreign_lib):
    """The loader calls these before the check: they must not contain AVX (VEX/EVEX) instructions."""
    if shutil.which("objdump") is None:
        pytest.skip("needs objdump")
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(foreign_lib.output)], capture_output=True,
                         text=True).stdout
    checked = ("convc_abi_version", "convc_version", "convc_metadata_json", "convc_check_cpu",
               "convc_cpu_feature_ok", "convc_cpu_feature", "convc_cpuid", "convc_cpuid_reg", "convc_xcr0",
               "convc_create")
    bodies: dict[str, list[str]] = {}
    current = None
    for line in asm.splitlines():
        if line.endswith(">:"):
            name = line.split("<")[1].rstrip(">:")
            current = name if name in checked else None
            if current:
                bodies[current] = []
        elif current and line.strip():
            bodies[current].append(line)
        elif not line.strip():
            current = None
    assert {"convc_check_cpu", "convc_create", "convc_abi_version"} <= set(bodies)
    for name, lines in bodies.items():
        vector = [ln for ln in lines if any(r in ln for r in ("%ymm", "%zmm", "%k1")) or "\tv" in ln]
        assert not vector, (name, vector[:3])


@pytest.mark.slow
def test_another_abi_version_is_refused(lenet_file, tmp_path, monkeypatch):
    monkeypatch.setattr(abi, "ABI_VERSION", abi.ABI_VERSION + 41)
    res = aot.build(str(lenet_file), tmp_path / "future.so", threads=1)
    monkeypatch.undo()
    with pytest.raises(convc.LoadError, match=rf"ABI version {abi.ABI_VERSION + 41}.*loads ABI version {abi.ABI_VERSION}"):
        convc.load(res.output)
