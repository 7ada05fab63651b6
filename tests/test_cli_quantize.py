"""``convc quantize``: writes the QDQ model, prints the accuracy change, exit codes 0 and 2."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import quantize_nets as qn
from convc.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantize_cli")
    n = qn._Net(1)
    features, width = qn.TRUNKS["mobilenet"](n)
    out = n.op("Gemm", [features, n.const(n.rng.standard_normal((10, width)) / 8, "fc_w"),
                        n.const(np.zeros(10), "fc_b")], transB=1)
    model = d / "net.onnx"
    onnx.save(n.model(out, "net"), str(model))
    calib = d / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((24, 1, qn.SIZE, qn.SIZE)).astype(np.float32))
    return d, model, calib


@pytest.mark.slow
def test_quantize_writes_the_model_and_reports(files, capsys):
    d, model, calib = files
    out = d / "net.int8.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calibrate", str(calib), "--method", "percentile",
                 "--percentile", "99.9", "-q"]) == 0
    text = capsys.readouterr().out
    assert "quantized 12 layer(s) (11 Conv, 1 Gemm) to int8" in text
    assert "percentile ranges" in text and "11 BatchNormalization(s) folded first" in text
    assert "calibrated on 24 sample(s) in batches of 16" in text
    assert "top-1 agrees on" in text and "/24 (" in text and "max |int8 - float|" in text
    assert f"wrote {out}" in text
    q = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 10
    assert "method=percentile" in {p.key: p.value for p in q.metadata_props}["convc.quantize"]


@pytest.mark.parametrize("extra, message", [
    (["--calibrate", "missing.npy"], "calibration data"),
    (["--calibrate", "EMPTY_DIR"], "the directory holds no .npy file"),
    (["--calibrate", "CALIB", "--percentile", "99"], "--percentile applies to --method percentile"),
    (["--calibrate", "WRONG_SHAPE"], "has shape [3, 1, 5, 5]; the input is [N, 1, 16, 16]"),
    (["--calibrate", "CALIB", "-o", "/nonexistent/dir/q.onnx"], "directory /nonexistent/dir does not exist"),
])
def test_errors_exit_2_with_one_line(files, capsys, tmp_path, extra, message):
    d, model, calib = files
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "wrong.npy", np.zeros((3, 1, 5, 5), np.float32))
    subst = {"EMPTY_DIR": str(tmp_path / "empty"), "CALIB": str(calib), "WRONG_SHAPE": str(tmp_path / "wrong.npy"),
             "missing.npy": str(tmp_path / "missing.npy")}
    args = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), *[subst.get(a, a) for a in extra], "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("convc: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_usage_errors_exit_2(files, capsys):
    d, model, calib = files
    assert_exit = []
    for args in (["quantize", str(model), "--calibrate", str(calib)],  # no -o
                 ["quantize", str(model), "-o", str(d / "x.onnx"), "--calibrate", str(calib), "--method", "kl"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert_exit.append(e.value.code)
    assert assert_exit == [2, 2]


def test_a_model_that_is_not_float_exits_2(files, capsys, tmp_path):
    d, model, calib = files
    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    bad = tmp_path / "u8.onnx"
    onnx.save(m, str(bad))
    assert main(["quantize", str(bad), "-o", str(tmp_path / "q.onnx"), "--calibrate", str(calib), "-q"]) == 2
    assert "model input 'x' is uint8: convc.quantize quantizes float32 models" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "q.onnx"), "--calibrate", str(calib),
                 "-q"]) == 2
    assert "nope.onnx" in capsys.readouterr().err


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for word in ("--calibrate", "--method", "percentile", "entropy", "--per-tensor", "--reduce-range", "QDQ",
                 "top-1 agreement"):
        assert word in out


@pytest.mark.slow
def test_check_float_compares_the_int8_model(files, capsys):
    d, model, calib = files
    out = d / "check.int8.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calibrate", str(calib), "--no-eval", "--per-tensor",
                 "-q"]) == 0
    assert "accuracy against" not in capsys.readouterr().out
    from convc.quantize_qdq import int8_weights
    assert not any(w.per_channel for w in int8_weights(onnx.load(str(out))))  # --per-tensor
    # exit 1: an output's error is over the tolerance (the ok case is tests/test_quantize.py's)
    assert main(["check", str(out), "--float", str(model), "--input", str(calib), "--tolerance", "1e-9", "-q"]) == 1
    text = capsys.readouterr().out
    assert "int8 (" in text and f"against its float original {model}" in text
    assert "12 int8 layer(s)" in text and "top-1 agrees on" in text and "/24 sample(s) OVER TOLERANCE" in text
    assert main(["check", str(model), "--float", str(model), "-q"]) == 2
    assert "has no int8 layer" in capsys.readouterr().err
    assert main(["check", str(out), "--float", str(model), "--precision", "bf16", "-q"]) == 2
