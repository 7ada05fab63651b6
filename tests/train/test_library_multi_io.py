"""Training libraries (``convc compile --train``) of a model with two inputs and two outputs: the
C ABI takes every input and one targets array per output (convc_train_step_v), each output with its
loss and weight, and its steps are convc.Trainer's; driven from Python (convc.load, ctypes) and
from C. Also the driver's ``load_forward`` with one shape per input, which both build on."""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import convc
from convc import driver
from convc.library import LoadedTrainer
from train import nets

BATCH, HW, SIDE, CLASSES, VALUES = 16, 8, 4, 5, 3
# a loss per output with its options, as the Trainer takes them
LOSSES = [convc.Loss("cross_entropy", label_smoothing=0.1, ignore_index=-100), convc.Loss("huber", delta=0.5)]
NAMES, WEIGHTS = ["cross_entropy", "huber"], [1.0, 0.5]
LR = 1e-2


def two_in_two_out(seed: int = 0) -> onnx.ModelProto:
    """image -> conv3x3 -> ReLU -> global average pool; side -> Gemm -> ReLU; concatenated, then a
    5-class head ("classes") and a 3-value regression head ("values")."""
    n = nets.Net(seed)
    a = n.node("Flatten", [n.node("GlobalAveragePool", [n.node("Relu", [n.conv("image", "conv", 3, 6)])])], axis=1)
    b = n.node("Relu", [n.gemm("side", "side_fc", SIDE, 6)])
    joint = n.node("Concat", [a, b], axis=1)
    cls, val = n.gemm(joint, "cls", 12, CLASSES), n.gemm(joint, "val", 12, VALUES)
    n.nodes[-2].output[0], n.nodes[-1].output[0] = "classes", "values"
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, HW, HW]),
              helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", SIDE])]
    outputs = [helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["N", CLASSES]),
               helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", VALUES])]
    g = helper.make_graph(n.nodes, "two_in_two_out", inputs, outputs, initializer=n.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    assert cls and val
    return m


def reference(w: dict[str, np.ndarray], image: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The net's two outputs in float64 numpy."""
    x = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(np.einsum("nchw,oc->nohw", x[:, :, i:i + HW, j:j + HW], w["conv.weight"][:, :, i, j])
               for i in range(3) for j in range(3)) + w["conv.bias"][None, :, None, None]
    a = np.maximum(conv, 0).mean(axis=(2, 3))
    b = np.maximum(side @ w["side_fc.weight"].T + w["side_fc.bias"], 0)
    joint = np.concatenate([a, b], 1)
    return joint @ w["cls.weight"].T + w["cls.bias"], joint @ w["val.weight"].T + w["val.bias"]


def batch(seed: int, n: int = BATCH, ignored: int = 0):
    """Inputs and targets; the first ``ignored`` class labels are ignore_index."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    labels[:ignored] = -100
    return ({"image": rng.standard_normal((n, 3, HW, HW)).astype(np.float32),
             "side": rng.standard_normal((n, SIDE)).astype(np.float32)},
            [labels, rng.standard_normal((n, VALUES)).astype(np.float32)])


def c_batch(step: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The batch the C program below feeds at ``step``: closed-form values C computes exactly."""
    def fill(n: int, salt: int) -> np.ndarray:
        k = np.arange(n)
        return ((((k * 7 + salt * 5 + step * 3) % 13) - 6) / 6.0).astype(np.float32)
    x = {"image": fill(BATCH * 3 * HW * HW, 1).reshape(BATCH, 3, HW, HW), "side": fill(BATCH * SIDE, 2).reshape(BATCH, SIDE)}
    k = np.arange(BATCH)
    return x, [(k + step) % CLASSES, fill(BATCH * VALUES, 3).reshape(BATCH, VALUES)]


def trainer(onnx_file) -> convc.Trainer:
    """The Python Trainer the library must match: the same losses, weights, optimizer and batch."""
    return convc.Trainer(str(onnx_file), input_shape={"image": (BATCH, 3, HW, HW), "side": (BATCH, SIDE)},
                         loss=LOSSES, loss_weights=WEIGHTS, optimizer=convc.optim.Adam(LR), seed=0)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """(the ONNX file, the training library built from it), built once for the module."""
    folder = tmp_path_factory.mktemp("multi_io")
    onnx_file = folder / "two_in_two_out.onnx"
    onnx.save(two_in_two_out(), str(onnx_file))
    out = folder / "train.so"
    return onnx_file, convc.compile_library(str(onnx_file), out, batch=BATCH, train=True, optimizer="adam", lr=LR,
                                            loss=LOSSES, loss_weights=WEIGHTS)


# --- the driver's forward loader ---------------------------------------------------------------------
def test_load_forward_takes_one_shape_per_input():
    """A dict by name or a list in input order, sharing the batch; each input gets its shape, and
    the outputs follow; the one-shape form still loads a one-input model."""
    model = two_in_two_out()
    by_name = driver.load_forward(model, {"side": (BATCH, SIDE), "image": (BATCH, 3, HW, HW)})
    in_order = driver.load_forward(model, [(7, 3, HW, HW), (7, SIDE)])
    assert [by_name.tensor(n).shape for n in by_name.inputs] == [(BATCH, 3, HW, HW), (BATCH, SIDE)]
    assert [in_order.tensor(n).shape for n in in_order.outputs] == [(7, CLASSES), (7, VALUES)]
    graph = driver.load_forward(by_name, {"image": (BATCH, 3, HW, HW), "side": (BATCH, SIDE)})  # a Graph
    assert list(graph.inputs) == ["image", "side"]
    one = driver.load_forward(nets.mlp(), (4, 3, 2, 2))
    assert one.tensor(one.inputs[0]).shape == (4, 3, 2, 2)


@pytest.mark.parametrize("shape, message", [
    ((BATCH, 3, HW, HW), "is one shape, the model has 2 inputs"),
    ({"image": (BATCH, 3, HW, HW)}, r"missing inputs \['side'\]"),
    ({"image": (BATCH, 3, HW, HW), "side": (BATCH, SIDE), "extra": (BATCH, 1)}, r"unexpected \['extra'\]"),
    ([(BATCH, 3, HW, HW)], "has 1 shapes, the model has 2 inputs"),
    ({"image": (BATCH, 3, HW, HW), "side": (8, SIDE)}, "batch sizes differ"),
    ({"image": (BATCH, 3, HW, HW), "side": (BATCH, 2.5)}, "positive integer sizes"),
    ({"image": (BATCH, 3, HW, HW), "side": (BATCH, SIDE + 1)}, "input 'side' is declared"),
])
def test_load_forward_refuses_shapes_that_do_not_fit(shape, message):
    with pytest.raises(convc.InputError, match=message):
        driver.load_forward(two_in_two_out(), shape)


@pytest.mark.slow
def test_forward_library_runs_any_batch_on_every_input(tmp_path):
    """An inference library of the two-input model built with a free batch (compiled at 1): convc.load
    splits both inputs into chunks for batches it has no code for, and both outputs equal numpy's."""
    model = two_in_two_out()
    onnx.save(model, str(tmp_path / "m.onnx"))
    lib = convc.load(convc.compile_library(str(tmp_path / "m.onnx"), tmp_path / "m.so").output)
    assert lib.metadata["graph_metadata"]["free_batch_inputs"] == ["image", "side"]
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    for n in (1, 5):
        x, _ = batch(n, n=n)
        out = lib.run(x)
        want = reference(w, x["image"], x["side"])
        np.testing.assert_allclose(out["classes"], want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["values"], want[1], rtol=1e-4, atol=1e-5)


# --- the library against the Trainer -------------------------------------------------------------------
@pytest.mark.slow
def test_library_steps_like_the_trainer(library):
    """Three steps (x a dict, y a list or dict per output): the loss (cross-entropy with label
    smoothing and ignore_index, the last step ignoring 3 samples, + 0.5 * Huber with delta 0.5) and
    every state array equal the Trainer's; the eval forward on both inputs gives both outputs."""
    onnx_file, res = library
    lib = convc.load(res.output)
    assert isinstance(lib, LoadedTrainer)
    assert [s.name for s in lib.inputs] == ["image", "side"] and lib.losses == NAMES and lib.loss_weights == WEIGHTS
    assert [(s.shape, s.dtype.name) for s in lib.targets] == [((BATCH,), "int64"), ((BATCH, VALUES), "float32")]
    t = trainer(onnx_file)
    for seed in range(3):
        x, y = batch(seed, ignored=3 if seed == 2 else 0)
        by_name = dict(zip(["classes", "values"], y))  # y as a dict by output name, on one side each time
        mine, theirs = (lib.step(x, by_name), t.step(x, y)) if seed % 2 else (lib.step(x, y), t.step(x, by_name))
        np.testing.assert_allclose(mine, theirs, rtol=1e-5)
    assert lib.steps_done == t.steps_done == 3
    mine, theirs = lib.state_dict(), t.state_dict()
    assert set(mine) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-7, err_msg=name)
    x, _ = batch(9, n=21)  # two chunks, the second padded
    classes, values = lib.predict_all(x)
    want = reference({k: v.astype(np.float64) for k, v in lib.weights().items()}, x["image"], x["side"])
    np.testing.assert_allclose(classes, want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values, want[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lib.predict([x["image"], x["side"]]), t.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_library_refuses_malformed_batches(library):
    lib = convc.load(library[1].output)
    x, y = batch(0)
    for bad_x, bad_y, message in [
        (x, y[0], "2 outputs"),
        (x, {"classes": y[0]}, r"missing targets of outputs \['values'\]"),
        ({"image": x["image"]}, y, r"missing inputs \['side'\]"),
        ({k: np.concatenate([v, v[:1]]) for k, v in x.items()}, [np.concatenate([v, v[:1]]) for v in y],
         "a batch of 17; this library trains on at most 16 samples"),
        ({k: v[:5] for k, v in x.items()}, [v[:4] for v in y], r"shape \(4,\), expected \(5,\)"),
        (x, [y[0], y[1].astype(np.float64)], "float32"),
        (x, [np.full(BATCH, CLASSES), y[1]], "out of range"),
        ({"image": x["image"], "side": x["side"].astype(np.float64)}, y, "float32"),
    ]:
        with pytest.raises(convc.InputError, match=message):
            lib.step(bad_x, bad_y)
    assert lib.steps_done == 0


@pytest.mark.slow
def test_c_abi_describes_each_output_and_its_loss(library):
    """The label table, each output's loss and weight, and the one-pointer step refusing (3) a model
    with two inputs, changing nothing."""
    so = ctypes.CDLL(str(library[1].output))
    text = lambda name, i: ctypes.cast(getattr(so, name)(i), ctypes.c_char_p).value  # noqa: E731
    for name in ("convc_label_name", "convc_label_dtype", "convc_label_loss"):
        getattr(so, name).restype, getattr(so, name).argtypes = ctypes.c_void_p, [ctypes.c_int]
    so.convc_loss_weight.restype, so.convc_loss_weight.argtypes = ctypes.c_float, [ctypes.c_int]
    so.convc_label_size.restype, so.convc_label_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    assert so.convc_num_labels() == 2 == so.convc_num_outputs() and so.convc_num_inputs() == 2
    assert [text("convc_label_dtype", j) for j in (0, 1)] == [b"int64", b"float32"]
    assert [text("convc_label_loss", j) for j in (0, 1)] == [b"cross_entropy", b"huber"]
    assert [so.convc_label_size(j) for j in (0, 1, 2)] == [BATCH, BATCH * VALUES, -1]
    assert [so.convc_loss_weight(j) for j in (0, 1)] == WEIGHTS and math.isnan(so.convc_loss_weight(2))
    assert so.convc_label_name(2) is None and so.convc_label_loss(-1) is None
    lib = convc.load(library[1].output)
    x, y = batch(0)
    labels = np.ascontiguousarray(y[0], np.int64)
    so.convc_train_step.argtypes = [ctypes.c_void_p] * 4
    assert so.convc_train_step(lib._ctx, x["image"].ctypes.data, labels.ctypes.data, None) == 3
    so.convc_train_step_v.argtypes = [ctypes.c_void_p] * 4
    null_label = (ctypes.c_void_p * 2)(labels.ctypes.data, None)
    inputs = (ctypes.c_void_p * 2)(x["image"].ctypes.data, x["side"].ctypes.data)
    assert so.convc_train_step_v(lib._ctx, inputs, null_label, None) == 1  # a NULL target
    assert lib.steps_done == 0


@pytest.mark.slow
def test_two_call_step_equals_the_step(library):
    """convc_compute_gradients_v then convc_apply_gradients on one context, convc_train_step_v on
    another from the same state: the same weights, bit for bit."""
    a, b = convc.load(library[1].output), convc.load(library[1].output)
    so = a._lib
    so.convc_compute_gradients_v.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    so.convc_apply_gradients.argtypes = [ctypes.c_void_p]
    x, y = batch(4)
    ins = (ctypes.c_void_p * 2)(x["image"].ctypes.data, x["side"].ctypes.data)
    ys = [np.ascontiguousarray(y[0], np.int64), y[1]]
    labels = (ctypes.c_void_p * 2)(*[v.ctypes.data for v in ys])
    loss = ctypes.c_float()
    assert so.convc_compute_gradients_v(a._ctx, ins, labels, ctypes.byref(loss), 0) == 0
    assert so.convc_apply_gradients(a._ctx) == 0
    assert b.step(x, y) == loss.value
    for name, v in b.state_dict().items():
        np.testing.assert_array_equal(a.state_dict()[name], v, err_msg=name)


C_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "train.h"

static void fill(float *v, int64_t n, int salt, int step) {
    for (int64_t k = 0; k < n; k++) v[k] = (float)((((k * 7 + salt * 5 + step * 3) % 13) - 6) / 6.0);
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 3;
    if (convc_abi_version() != CONVC_ABI_VERSION || convc_check_cpu() != 0) return 2;
    if (convc_num_labels() != CONVC_NUM_OUTPUTS || CONVC_NUM_INPUTS != 2) return 3;
    convc_ctx *ctx = convc_create(0);
    if (!ctx) return 4;
    float *image = malloc(sizeof(float) * CONVC_INPUT0_SIZE), *side = malloc(sizeof(float) * CONVC_INPUT1_SIZE);
    static int64_t classes[CONVC_LABEL0_SIZE];  /* the header's sizes */
    static float values[CONVC_LABEL1_SIZE];
    if (CONVC_NUM_LABELS != 2 || convc_label_size(0) != CONVC_LABEL0_SIZE) return 6;
    const float *inputs[CONVC_NUM_INPUTS] = {image, side};
    const void *labels[CONVC_NUM_OUTPUTS] = {classes, values};
    for (int s = 0; s < steps; s++) {
        fill(image, CONVC_INPUT0_SIZE, 1, s);
        fill(side, CONVC_INPUT1_SIZE, 2, s);
        for (int64_t k = 0; k < convc_label_size(0); k++) classes[k] = (k + s) % 5;
        fill(values, convc_label_size(1), 3, s);
        float loss;
        if (convc_train_step_v(ctx, inputs, labels, &loss) != 0) return 5;
        printf("%.9g\n", loss);
    }
    fprintf(stderr, "%lld steps done; %s x %g + %s x %g\n", (long long)convc_steps_done(ctx), convc_label_loss(0),
            convc_loss_weight(0), convc_label_loss(1), convc_loss_weight(1));
    convc_destroy(ctx);
    free(image); free(side);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.slow
def test_c_program_trains_like_the_trainer(library, tmp_path):
    """A C program that includes the header feeds both inputs and both targets through
    convc_train_step_v: its losses are the Trainer's on the same batches."""
    onnx_file, res = library
    source = tmp_path / "train_two.c"
    source.write_text(C_PROGRAM)
    exe = tmp_path / "train_two"
    folder = res.output.parent
    made = subprocess.run(["cc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(source), f"-I{folder}",
                           str(res.output), f"-Wl,-rpath,{folder}"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ran = subprocess.run([str(exe), "3"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    t = trainer(onnx_file)
    np.testing.assert_allclose([float(v) for v in ran.stdout.split()], [t.step(*c_batch(s)) for s in range(3)],
                               rtol=1e-5)
    assert "3 steps done; cross_entropy x 1 + huber x 0.5" in ran.stderr


def test_cli_passes_a_loss_and_a_weight_per_output(tmp_path, monkeypatch, capsys):
    """--loss and --loss-weight repeat, one per output, in output order (the build is replaced: the
    library itself is tested above)."""
    import convc.compiler
    from convc.cli import main
    seen = {}

    def build(model, output, **kwargs):
        seen.update(kwargs)
        raise convc.ConvcError("stopped before the build")
    monkeypatch.setattr(convc.compiler, "build_training_library", build)
    model = tmp_path / "m.onnx"
    onnx.save(two_in_two_out(), str(model))
    args = ["compile", str(model), "-o", str(tmp_path / "t.so"), "--train", "--batch", "16"]
    assert main(args + ["--loss", "cross_entropy", "--loss", "mse", "--loss-weight", "1", "--loss-weight", "0.5"]) != 0
    assert seen["loss"] == ["cross_entropy", "mse"] and seen["loss_weights"] == [1.0, 0.5] and seen["batch"] == 16
    assert main(args + ["--loss", "mse"]) != 0
    assert seen["loss"] == "mse" and seen["loss_weights"] is None
    assert "stopped before the build" in capsys.readouterr().err


def test_cli_refuses_loss_weights_that_do_not_pair_with_losses(tmp_path, capsys):
    from convc.cli import main
    model = tmp_path / "m.onnx"
    onnx.save(two_in_two_out(), str(model))
    code = main(["compile", str(model), "-o", str(tmp_path / "t.so"), "--train", "--loss", "cross_entropy",
                 "--loss", "mse", "--loss-weight", "0.5"])
    assert code != 0
    assert "1 --loss-weight for 2 --loss" in capsys.readouterr().err
    assert main(["compile", str(model), "-o", str(tmp_path / "t.so"), "--loss-weight", "0.5"]) != 0
    assert "--loss-weight applies to a training library" in capsys.readouterr().err
