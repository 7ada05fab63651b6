"""precision="bf16": convs and matrix products multiply bf16 values and accumulate in float32.

Each layer is checked against a float64 computation (torch, double precision) on bf16-rounded
inputs and weights: equal to float32 summation accuracy (~1e-6 relative), and at least 100x
farther from the unrounded float32 result, so a compile that skipped a rounding would fail. Nets:
bf16 logits within 1e-2 relative of float32 and the same top-1. Then the option's plumbing: the
plan, refused values, the CLI and ``convc check --precision bf16``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.cli import main
from convc.errors import InputError
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.ops.precision import is_bf16, round_bf16

torch = pytest.importorskip("torch")


class Net:
    """A tiny ONNX builder: seeded He-scaled weights, conv + BN + activation, residual adds."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, a: np.ndarray) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, bias: bool = False,
             pad: int | None = None) -> str:
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k)))
        ins = [x, w] + ([self.const(self.rng.uniform(-0.5, 0.5, cout))] if bias else [])
        p = k // 2 if pad is None else pad
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride] * 2, pads=[p] * 4, group=group)

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "relu") -> str:
        y = self.conv(x, cin, cout, k, stride, group)
        bn = [self.const(self.rng.uniform(0.5, 1.5, cout)), self.const(self.rng.uniform(-0.1, 0.1, cout)),
              self.const(self.rng.uniform(-0.1, 0.1, cout)), self.const(self.rng.uniform(0.5, 1.5, cout))]
        y = self.node("BatchNormalization", [y] + bn, epsilon=1e-5)
        if act == "relu":
            return self.node("Relu", [y])
        if act == "relu6":
            return self.node("Clip", [y, self.const(np.array(0.0)), self.const(np.array(6.0))])
        return y

    def fc(self, x: str, cin: int, cout: int) -> str:
        return self.node("Gemm", [x, self.const(self.rng.standard_normal((cout, cin)) / np.sqrt(cin)),
                                  self.const(self.rng.uniform(-0.1, 0.1, cout))], transB=1)

    def model(self, x_shape: tuple[int, ...], out: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m


def weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def f64(a: np.ndarray):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def check_layer(model: onnx.ModelProto, x: np.ndarray, reference, threads: int) -> None:
    """convc bf16 == reference(bf16 x, bf16 weights) in float64 to float32 accuracy, and far from the
    float64 result on the unrounded values."""
    w = weights(model)
    got = convc.compile(model, precision="bf16", threads=threads, cache=False).run({"x": x})
    (got,) = got.values()
    want = reference(round_bf16(x), {k: round_bf16(v) if v.ndim > 1 else v for k, v in w.items()})
    unrounded = reference(x, w)
    assert rel(got, want) < 2e-6, "bf16 products summed in float32"
    assert rel(unrounded, want) > 2e-4, "the test must tell bf16 from float32"


SIZES = [(16, 19, 37, 29, 31)]  # batch 16, odd channels and widths: vector remainders everywhere


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k, stride, group, bias", [
    (3, 1, 1, True),    # channels-last implicit GEMM
    (3, 2, 1, False),   # strided
    (1, 1, 1, True),    # pointwise
    (3, 1, 19, True),   # depthwise (channel multiplier 37/19 is not whole: use cout = cin below)
    (3, 1, 2, False),   # grouped: Im2Col + grouped pointwise conv (channels first)
])
def test_conv_is_bf16_products_with_float32_sums(threads, k, stride, group, bias):
    n, cin, cout, h, wd = SIZES[0]
    cin, cout = (19, 19) if group == 19 else (38, 38) if group == 2 else (cin, cout)
    net = Net(seed=k + stride + group)
    y = net.conv("x", cin, cout, k, stride, group, bias)
    model = net.model((n, cin, h, wd), y)
    x = np.random.default_rng(3).standard_normal((n, cin, h, wd)).astype(np.float32)
    names = [t.name for t in model.graph.initializer]

    def reference(x, w):
        b = f64(w[names[1]]) if bias else None
        return torch.nn.functional.conv2d(f64(x), f64(w[names[0]]), b, stride=stride, padding=k // 2,
                                          groups=group).numpy()
    check_layer(model, x, reference, threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_is_bf16_products_with_float32_sums(threads):
    net = Net(seed=5)
    y = net.fc("x", 517, 203)
    model = net.model((16, 517), y)
    x = np.random.default_rng(4).standard_normal((16, 517)).astype(np.float32)
    wn, bn = [t.name for t in model.graph.initializer]
    check_layer(model, x, lambda x, w: (f64(x) @ f64(w[wn]).T + f64(w[bn])).numpy(), threads)


def test_matmul_of_two_runtime_tensors_rounds_both():
    """MatMul(x, Transpose(x)): neither operand is a constant, so both are rounded at run time."""
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
                           helper.make_node("MatMul", ["x", "xt"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 33, 47))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.random.default_rng(6).standard_normal((3, 33, 47)).astype(np.float32)
    got = convc.compile(model, precision="bf16", cache=False).run({"x": x})["y"]
    r = f64(round_bf16(x))
    want = (r @ r.transpose(1, 2)).numpy()
    assert rel(got, want) < 2e-6
    assert rel((f64(x) @ f64(x).transpose(1, 2)).numpy(), want) > 2e-4


# --- nets ------------------------------------------------------------------------------------------

def resnet18_like(batch: int, size: int) -> onnx.ModelProto:
    """ResNet-18's layer shapes (torchvision), BN after every conv, a 1000-class Gemm head."""
    n = Net(0)
    y = n.conv_bn("x", 3, 64, 7, 2)
    y = n.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            h = n.conv_bn(n.conv_bn(y, cin, cout, 3, s), cout, cout, 3, 1, act=None)
            short = y if s == 1 and cin == cout else n.conv_bn(y, cin, cout, 1, s, act=None)
            y = n.node("Relu", [n.node("Add", [h, short])])
            cin = cout
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, size, size), n.fc(y, 512, 1000))


def mobilenet_like(batch: int, size: int) -> onnx.ModelProto:
    """MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project, ReLU6), six blocks.

    Shallower than MobileNetV2 on purpose: each bf16 layer adds ~2e-3 relative error, and with
    random weights the full depth (17 blocks, 52 convs; benchmarks/nets.py) ends at 5.6e-2 from
    float32 (measured with convc check --precision bf16; rounding only its first conv's operands
    already gives 3.2e-2), past the 1e-2 this test holds six blocks to (7.6e-3 measured)."""
    n = Net(1)
    y = n.conv_bn("x", 3, 32, 3, 2, act="relu6")
    cin = 32
    for t, c, reps, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2), (6, 64, 1, 2), (6, 96, 1, 1)):
        for i in range(reps):
            stride = s if i == 0 else 1
            h = y if t == 1 else n.conv_bn(y, cin, cin * t, 1, act="relu6")
            h = n.conv_bn(h, cin * t, cin * t, 3, stride, group=cin * t, act="relu6")
            h = n.conv_bn(h, cin * t, c, 1, act=None)
            y = n.node("Add", [h, y]) if stride == 1 and cin == c else h
            cin = c
    y = n.conv_bn(y, cin, 640, 1, act="relu6")
    y = n.node("Flatten", [n.node("GlobalAveragePool", [y])])
    return n.model((batch, 3, size, size), n.fc(y, 640, 1000))


@pytest.mark.parametrize("build, batch, size, threads", [
    pytest.param(resnet18_like, 2, 224, 2, marks=pytest.mark.slow),  # 5.6e-3 measured
    (mobilenet_like, 16, 97, 1),
], ids=["resnet18", "mobilenet"])
def test_net_in_bf16_is_within_1e2_of_float32_with_the_same_top1(build, batch, size, threads):
    model = build(batch, size)
    x = np.random.default_rng(7).standard_normal((batch, 3, size, size)).astype(np.float32)
    f32 = convc.compile(model, threads=threads, cache=False).run({"x": x})
    bf16_model = convc.compile(model, threads=threads, precision="bf16", cache=False)
    bf16 = bf16_model.run({"x": x})
    (a,), (b,) = f32.values(), bf16.values()
    deviation = rel(b, a)
    assert 1e-4 < deviation < 1e-2  # bf16 did change the numbers, within the bound
    assert (a.argmax(1) == b.argmax(1)).all()
    g = bf16_model.graph
    convs = [op for op in g.ops() if op.kind in (OpKind.CONV, OpKind.GEMM)]
    assert all(is_bf16(g.tensor(op.inputs[1]).data) for op in convs)
    assert not any(op.attrs.algorithm in (A.WINOGRAD_4X4, A.WINOGRAD_2X2) for op in convs if op.kind is OpKind.CONV)


# --- the option ------------------------------------------------------------------------------------

def small_model() -> onnx.ModelProto:
    net = Net(2)
    y = net.conv_bn("x", 16, 24, 3)
    y = net.conv_bn(y, 24, 24, 3)
    y = net.node("Flatten", [net.node("GlobalAveragePool", [y])])
    return net.model((2, 16, 20, 20), net.fc(y, 24, 10))


@pytest.mark.slow
def test_the_option_reaches_the_plan():
    model = small_model()
    bf16 = convc.compile(model, precision="bf16", cache=False).graph
    f32 = convc.compile(model, cache=False).graph
    assert bf16.metadata["precision"] == "bf16" and "precision" not in f32.metadata
    rounds = [op for op in bf16.ops() if op.kind is OpKind.ROUND_BF16]
    products = [op for op in bf16.ops() if op.kind in (OpKind.CONV, OpKind.GEMM)]
    assert len(rounds) == 3  # the first conv's input, the second conv's, the Gemm's
    assert all(bf16.producer(op.inputs[0]).kind is OpKind.ROUND_BF16 for op in products)
    assert all(is_bf16(bf16.tensor(op.inputs[1]).data) for op in products)
    assert not any(op.kind is OpKind.ROUND_BF16 for op in f32.ops())
    assert not any(is_bf16(f32.tensor(op.inputs[1]).data) for op in f32.ops() if op.kind is OpKind.CONV)


@pytest.mark.parametrize("bad", ["fp16", "BF16", 3, "float16"])
def test_refused_values_are_input_errors(bad):
    with pytest.raises(InputError, match="precision must be one of 'float32', 'bf16'"):
        convc.compile(small_model(), precision=bad)


@pytest.mark.slow
def test_winograd_is_off_in_bf16_unless_asked():
    """3x3 convs with 16+ channels run as Winograd in float32; bf16 keeps the direct conv (its
    products are bf16 products) unless winograd=True is given."""
    model = small_model()

    def algorithms(**kw):
        g = convc.compile(model, cache=False, **kw).graph
        return {op.attrs.algorithm for op in g.ops() if op.kind is OpKind.CONV}
    assert A.WINOGRAD_4X4 in algorithms()
    assert algorithms(precision="bf16") == {A.IMPLICIT_GEMM_NHWC}
    assert A.WINOGRAD_4X4 in algorithms(precision="bf16", winograd=True)


@pytest.mark.slow
def test_a_bf16_compile_is_not_served_the_cached_float32_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)  # the suite runs without the cache
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    model = small_model()
    x = np.random.default_rng(0).standard_normal((2, 16, 20, 20)).astype(np.float32)
    a = convc.compile(model).run({"x": x})
    b = convc.compile(model, precision="bf16").run({"x": x})
    c = convc.compile(model).run({"x": x})
    stages: list[str] = []
    d = convc.compile(model, precision="bf16", progress=stages.append).run({"x": x})
    assert not any(s.startswith("LLVM") for s in stages), "the bf16 compile is a cache entry of its own"
    (a,), (b,), (c,), (d,) = a.values(), b.values(), c.values(), d.values()
    assert np.array_equal(a, c) and not np.array_equal(a, b) and np.array_equal(b, d)


def test_the_callers_weights_are_not_rounded():
    from convc.driver import load_graph
    g = load_graph(small_model(), None, None)
    before = {t.name: t.data.copy() for t in g.constants()}
    from convc.compiler import compile_graph
    compile_graph(g, precision="bf16", cache=False)
    assert all(np.array_equal(t.data, before[t.name]) for t in g.constants())


# --- CLI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bf16") / "small.onnx"
    onnx.save(small_model(), str(path))
    return path


@pytest.mark.parametrize("command", ["run", "compile", "profile", "check"])
def test_help_documents_precision(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--precision" in out and "bf16" in out


@pytest.mark.slow
def test_run_honours_precision(model_file, monkeypatch, capsys):
    seen = {}
    real = convc.compile

    def spy(*args, **kwargs):
        seen.update(kwargs)
        model = real(*args, **{**kwargs, "cache": False})
        seen["rounds"] = sum(op.kind is OpKind.ROUND_BF16 for op in model.graph.ops())
        return model
    monkeypatch.setattr(convc, "compile", spy)
    assert main(["run", str(model_file), "--repeat", "1", "--quiet", "--precision", "bf16"]) == 0
    assert seen["precision"] == "bf16" and seen["winograd"] is None and seen["rounds"] == 3
    assert main(["run", str(model_file), "--repeat", "1", "--quiet"]) == 0
    assert seen["precision"] is None and seen["rounds"] == 0


def test_compile_honours_precision(model_file, tmp_path, monkeypatch):
    seen = {}
    import convc.compiler
    real = convc.compiler.build

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr("convc.compiler.build", spy)  # imports convc.compiler (import convc is lazy)
    out = tmp_path / "m.o"
    assert main(["compile", str(model_file), "-o", str(out), "--precision", "bf16", "--quiet"]) == 0
    assert seen["precision"] == "bf16" and out.exists()


def test_profile_honours_precision(model_file, capsys):
    assert main(["profile", str(model_file), "--format", "json", "--precision", "bf16", "--quiet"]) == 0
    bf16 = capsys.readouterr().out
    assert main(["profile", str(model_file), "--format", "json", "--quiet"]) == 0
    f32 = capsys.readouterr().out
    assert "RoundBF16" in bf16 and "RoundBF16" not in f32
    json.loads(bf16)


@pytest.mark.parametrize("command", ["compile", "profile"])
def test_precision_is_refused_with_train(model_file, tmp_path, capsys, command):
    extra = ["-o", str(tmp_path / "t.so")] if command == "compile" else []
    assert main([command, str(model_file), "--train", "--precision", "bf16", *extra]) == 2
    assert "--precision bf16 is not available with --train" in capsys.readouterr().err


def test_bad_precision_on_the_command_line(model_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(model_file), "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


# --- convc check --precision bf16 ------------------------------------------------------------------

@pytest.mark.slow
def test_check_reports_the_deviation_per_output_and_where_it_grows(model_file, capsys, tmp_path):
    x = np.random.default_rng(9).standard_normal((2, 16, 20, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["check", str(model_file), "--precision", "bf16", "--input", f"x={tmp_path / 'x.npy'}", "-q"]) == 0
    out = capsys.readouterr().out
    assert "convc in bf16 against float32" in out and "on the given inputs" in out
    assert "top-1 agrees on 2/2 sample(s) ok" in out
    assert "no layer's deviation exceeds 0.01" in out
    # with a tolerance below bf16's error, the first layer over it is the first conv's output
    assert main(["check", str(model_file), "--precision", "bf16", "--tolerance", "1e-5", "-q"]) == 1
    out = capsys.readouterr().out
    assert "first layer whose deviation exceeds 1e-05: 'conv0' from node 'conv0' (Conv)" in out
    assert "OVER TOLERANCE" in out


@pytest.mark.slow
def test_check_model_in_bf16_measures_against_float32():
    from convc.check import check_model
    report = check_model(small_model(), precision="bf16", seed=3)
    assert report.precision == "bf16" and report.tolerance == 1e-2 and report.ok
    (out,) = report.outputs
    assert 1e-5 < out.error < 1e-2
    assert report.top1[out.tensor] == (2, 2)
    assert [t.tensor for t in report.layers][0] == "conv0" and report.layers[0].error > 1e-5
    with pytest.raises(InputError):
        check_model(small_model(), precision="fp16")


@pytest.mark.slow
def test_batch_variants_compiled_later_are_bf16_too():
    """A symbolic batch compiles other sizes on first use, outside convc.compile: still in bf16."""
    model = small_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    x = np.random.default_rng(1).standard_normal((3, 16, 20, 20)).astype(np.float32)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    want = next(iter(convc.compile(fixed, precision="bf16", cache=False).run({"x": x}).values()))
    f32 = next(iter(convc.compile(fixed, cache=False).run({"x": x}).values()))
    compiled = convc.compile(model, precision="bf16", cache=False)  # batch 1 now, batch 3 on first use
    got = next(iter(compiled.run({"x": x}).values()))
    assert got.shape[0] == 3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    assert rel(got, f32) > 1e-4


@pytest.mark.slow
def test_bf16_plans_pass_the_arena_check(monkeypatch):
    """CONVC_CHECK_ARENA: the RoundBF16 outputs are planned like any tensor (static check and canaries)."""
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    model = mobilenet_like(2, 33)
    x = np.random.default_rng(2).standard_normal((2, 3, 33, 33)).astype(np.float32)
    got = next(iter(convc.compile(model, precision="bf16", threads=2).run({"x": x}).values()))
    monkeypatch.delenv("CONVC_CHECK_ARENA")
    want = next(iter(convc.compile(model, precision="bf16", threads=2, cache=False).run({"x": x}).values()))
    np.testing.assert_array_equal(got, want)


def test_weights_fed_at_run_time_are_rounded_at_run_time():
    """An initializer that is also a graph input can be fed to run (a variant reading it at run time
    compiles on first use): a RoundBF16 rounds the fed weights."""
    net = Net(3)
    y = net.conv("x", 5, 7, 3, bias=True)
    model = net.model((2, 5, 9, 11), y)
    wname, bname = [t.name for t in model.graph.initializer]
    w = weights(model)
    model.graph.input.append(helper.make_tensor_value_info(wname, TensorProto.FLOAT, w[wname].shape))
    x = np.random.default_rng(0).standard_normal((2, 5, 9, 11)).astype(np.float32)
    fed = (w[wname] * 1.37).astype(np.float32)
    got = convc.compile(model, precision="bf16", cache=False).run({"x": x, wname: fed})[y]
    bias = f64(w[bname])
    conv = lambda x, k: torch.nn.functional.conv2d(f64(x), f64(k), bias, padding=1).numpy()  # noqa: E731
    want = conv(round_bf16(x), round_bf16(fed))
    assert rel(got, want) < 2e-6 and rel(conv(x, fed), want) > 2e-4


@pytest.mark.skipif(__import__("shutil").which("cc") is None, reason="needs a C compiler")
@pytest.mark.slow
def test_a_bf16_library_computes_what_the_jit_does(tmp_path):
    from convc.compiler import build
    model = small_model()
    build(model, tmp_path / "m.so", precision="bf16")
    x = np.random.default_rng(0).standard_normal((2, 16, 20, 20)).astype(np.float32)
    lib = next(iter(convc.load(tmp_path / "m.so").run({"x": x}).values()))
    jit = next(iter(convc.compile(model, precision="bf16", cache=False).run({"x": x}).values()))
    f32 = next(iter(convc.compile(model, cache=False).run({"x": x}).values()))
    np.testing.assert_array_equal(lib, jit)
    assert rel(lib, f32) > 1e-4
