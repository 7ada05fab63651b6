"""The C example (examples/c/main.c) builds with cc against a generated header and library, and
prints the outputs the Python API computes."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from aot_helpers import EXAMPLE_C, inputs_for

import convc
from convc.abi import ABI_VERSION

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


def parse_outputs(text: str) -> dict[str, np.ndarray]:
    outs: dict[str, list[float]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("output "):
            _, name, shape = line.split(" ", 2)
            current = name
            outs[name] = []
            shapes[name] = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
        elif current is not None and line.strip():
            outs[current].append(float(line))
    return {n: np.array(v, dtype=np.float32).reshape(shapes[n]) for n, v in outs.items()}


@pytest.fixture(scope="module")
def demo(lenet_lib, tmp_path_factory):
    folder = lenet_lib.output.parent
    exe = folder / "demo"
    cmd = ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(EXAMPLE_C), f"-I{folder}",
           str(lenet_lib.output), f"-Wl,-rpath,{folder}"]
    made = subprocess.run(cmd, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return exe


def test_header_declares_the_abi(lenet_lib):
    text = lenet_lib.header.read_text()
    for decl in ("convc_ctx *convc_create(int nthreads);", "void convc_destroy(convc_ctx *ctx);",
                 "int convc_run_model(convc_ctx *ctx, const float *const *inputs, float *const *outputs);",
                 "int convc_check_cpu(void);", "const char *convc_version(void);", "int convc_abi_version(void);",
                 "const int64_t *convc_input_shape(int i);", "const char *convc_cpu_features(void);",
                 f"#define CONVC_ABI_VERSION {ABI_VERSION}", "#define CONVC_INPUT0_SIZE 1568"):
        assert decl in text, decl
    assert '"input"' in text and "[2, 1, 28, 28]" in text  # documented shapes


def test_library_needs_only_libc(lenet_lib):
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf")
    dyn = subprocess.run(["readelf", "-d", str(lenet_lib.output)], capture_output=True, text=True).stdout
    needed = {line.split("[")[1].split("]")[0] for line in dyn.splitlines() if "(NEEDED)" in line}
    assert needed <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, needed
    assert "Library soname: [model.so]" in dyn


@pytest.mark.slow
def test_c_example_matches_python_on_an_input_file(demo, lenet_lib, lenet_jit, tmp_path):
    x, = inputs_for(lenet_jit, seed=3)
    path = tmp_path / "input.bin"
    x.astype("<f4").tofile(path)
    ran = subprocess.run([str(demo), str(path), "2"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    got = parse_outputs(ran.stdout)
    want = lenet_jit.run({"input": x})
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)
    # and convc.load of the same library agrees exactly with the C program's arithmetic
    loaded = convc.load(lenet_lib.output)
    np.testing.assert_allclose(loaded.run({"input": x})["output"], got["output"], rtol=1e-6, atol=1e-8)


def test_c_example_fixed_input_single_thread(demo, lenet_jit):
    ran = subprocess.run([str(demo), "", "1"], capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0  # "" is not a file: a clear message, no crash
    ran = subprocess.run([str(demo)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "model lenet5" in ran.stderr
    k = np.arange(2 * 28 * 28)
    x = (((k % 17) - 8) / 8.0).astype(np.float32).reshape(2, 1, 28, 28)
    np.testing.assert_allclose(parse_outputs(ran.stdout)["output"], lenet_jit(x), rtol=1e-5, atol=1e-7)
