"""``convc run``'s report: class scores of any shape with one non-unit axis after the batch,
``--top-k``, the throughput, ``--format json``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.cli import main
from convc.cli.run import class_scores, top_k


@pytest.fixture(scope="module")
def squeeze_like(tmp_path_factory) -> Path:
    """x (N, 3, 4, 4) -> 1x1 Conv to 12 channels -> GlobalAveragePool: a (N, 12, 1, 1) output, the
    shape of SqueezeNet's and DenseNet's class scores in the ONNX model zoo."""
    w = np.random.default_rng(0).standard_normal((12, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["scores"])]
    graph = helper.make_graph(nodes, "squeeze_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 12, 1, 1])],
                              initializer=[numpy_helper.from_array(w, "w")])
    path = tmp_path_factory.mktemp("models") / "squeeze_like.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_class_scores_reads_a_single_non_unit_axis():
    assert class_scores(np.zeros((1, 1000, 1, 1))).shape == (1, 1000)
    assert class_scores(np.zeros((4, 10))).shape == (4, 10)
    assert class_scores(np.zeros((2, 1, 7))).shape == (2, 7)
    assert class_scores(np.zeros(5)).shape == (1, 5)
    assert class_scores(np.zeros((1, 3, 8, 8))) is None  # an image, not scores
    assert class_scores(np.zeros((4, 1))) is None        # one score per sample
    assert top_k(np.array([[0.1, 0.7, 0.2], [3.0, 1.0, 2.0]]), 2) == [[(1, 0.7), (2, 0.2)], [(0, 3.0), (2, 2.0)]]
    assert len(top_k(np.zeros((1, 3)), 10)[0]) == 3


def test_top_k_of_a_1000x1x1_shaped_output(squeeze_like, capsys):
    assert main(["run", str(squeeze_like), "-q", "-r", "1", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    y = convc.compile(str(squeeze_like))(np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))
    best = np.argsort(-y.reshape(12))[:3].tolist()
    assert f"argmax per row: [{best[0]}] (read as 1 x 12 classes)" in out
    line = next(l for l in out.splitlines() if "top-3 of row 0:" in l)
    assert [int(c.split()[0]) for c in line.split(": ", 1)[1].split(", ")] == best


def test_throughput_with_batch(squeeze_like, capsys):
    assert main(["run", str(squeeze_like), "-q", "-r", "3", "--batch", "6"]) == 0
    out = capsys.readouterr().out
    assert "throughput: " in out and "images/s at batch 6" in out
    assert "top-5 of row 3:" in out and "top-k of 2 more rows" in out


def test_json_format(squeeze_like, tmp_path, capsys):
    assert main(["run", str(squeeze_like), "-q", "-r", "2", "--batch", "2", "--format", "json", "--top-k", "2",
                 "--output-dir", str(tmp_path / "out")]) == 0
    d = json.loads(capsys.readouterr().out)  # stdout is the JSON object only
    assert d["batch"] == 2 and d["latency_ms"]["runs"] == 2 and d["images_per_second"] > 0
    assert d["inputs"] == [{"name": "x", "shape": [2, 3, 4, 4], "dtype": "float32", "source": "random normal (seed 0)"}]
    (out,) = d["outputs"]
    assert out["shape"] == [2, 12, 1, 1] and len(out["top_k"]) == 2 and len(out["top_k"][0]) == 2
    saved = np.load(d["saved"]["scores"]).reshape(2, 12)
    assert out["argmax"] == saved.argmax(axis=1).tolist()
    assert out["top_k"][1][0] == {"class": int(saved[1].argmax()), "score": pytest.approx(float(saved[1].max()))}
