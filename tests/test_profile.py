"""``convc.profile`` and ``convc profile``: exact counts, torchvision's figures, every output format."""
from __future__ import annotations

import csv
import io
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.cli import main
from convc.models import lenet5
from convc.report import render_text

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_resnet_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x(1,3,8,8) -> conv3x3(3->4, bias)+BN+Relu -> conv3x3(4->4, no bias)+BN, + residual -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm(4->5) -> Softmax."""
    def f32(*shape):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    inits = [numpy_helper.from_array(v, n) for n, v in {
        "w1": f32(4, 3, 3, 3), "b1": f32(4), "w2": f32(4, 4, 3, 3),
        "s1": f32(4), "o1": f32(4), "m1": f32(4), "v1": f32(4),
        "s2": f32(4), "o2": f32(4), "m2": f32(4), "v2": f32(4),
        "wf": f32(5, 4), "bf": f32(5), "wp": f32(4, 3, 1, 1)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "s2", "o2", "m2", "v2"], ["n2"], name="bn2"),
        helper.make_node("Conv", ["x", "wp"], ["p"], name="proj", kernel_shape=[1, 1]),
        helper.make_node("Add", ["p", "n2"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["l"], name="fc", transB=1),
        helper.make_node("Softmax", ["l"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "small_resnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def small_resnet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_resnet.onnx"
    onnx.save(small_resnet_model(np.random.default_rng(0)), str(path))
    return path


def test_profile_of_a_hand_built_model(small_resnet):
    p = convc.profile(small_resnet)
    rows = {l.name: l for l in p.layers}
    assert [l.name for l in p.layers] == ["conv1", "conv2", "proj", "gap", "flatten", "fc", "softmax"]
    assert rows["conv1"].op == "Conv+BatchNormalization+Relu"
    assert rows["proj"].op == "Conv+Add+Relu"  # the later conv feeding the Add takes the residual
    assert rows["conv2"].op == "Conv+BatchNormalization"
    assert rows["conv1"].macs == 6_912       # 4*8*8 outputs * 3*3*3 taps
    assert rows["conv2"].macs == 9_216       # 4*8*8 * 4*3*3
    assert rows["proj"].macs == 768          # 4*8*8 * 3*1*1
    assert rows["fc"].macs == 20             # 5 outputs * 4
    assert p.total_macs == 16_916            # 6912 + 9216 + 768 + 20
    assert rows["conv1"].params == 120       # conv 4*3*3*3 + bias 4 = 112, BN scale+B 2*4 = 8
    assert rows["conv2"].params == 152       # 4*4*3*3 = 144, BN scale+B 8
    assert rows["conv1"].bn_stats == rows["conv2"].bn_stats == 8   # mean+var 2*4
    assert rows["proj"].params == 12        # 4*3*1*1
    assert rows["fc"].params == 25          # 5*4 + 5
    assert p.total_params == 309            # 120 + 152 + 12 + 25
    assert rows["conv1"].other_flops == 1_024  # 256 outputs * (bias 1 + BN 2 + Relu 1)
    assert rows["proj"].other_flops == 512     # 256 * (Add 1 + Relu 1); no bias
    assert rows["softmax"].other_flops == 20   # 4 * 5
    assert rows["conv1"].output_shape == (1, 4, 8, 8) and rows["conv1"].output_bytes == 1_024  # 256 * 4 bytes
    assert rows["conv2"].weight_bytes == 4 * (144 + 4)  # folded: weight + the bias BN folding added
    assert rows["flatten"].macs == 0 and not rows["flatten"].unmodelled
    m = p.memory
    assert p.peak_memory_bytes == m.arena_bytes and m.lower_bound_bytes <= m.arena_bytes < m.activation_bytes
    assert m.saving_bytes == m.activation_bytes - m.arena_bytes
    assert abs(sum(p.share(l) for l in p.layers) - 1.0) < 1e-9
    conv = next(r for r in p.by_op())  # grouped by op, the fused combinations as detail
    assert conv["op"] == "Conv" and conv["layers"] == 3
    assert conv["fused"] == {"Conv+BatchNormalization+Relu": 1, "Conv+BatchNormalization": 1, "Conv+Add+Relu": 1}
    assert [l.name for l in p.top(2)] == ["conv2", "conv1"]


def test_json_and_csv_reconcile(small_resnet):
    p = convc.profile(small_resnet)
    d = json.loads(p.to_json())
    assert d["totals"]["macs"] == p.total_macs == sum(l["macs"] for l in d["layers"])
    assert d["totals"]["flops"] == 2 * p.total_macs
    assert d["memory"]["arena_bytes"] == p.peak_memory_bytes
    assert "torchvision" in d["convention"]
    rows = list(csv.DictReader(io.StringIO(p.to_csv())))
    assert rows[-1]["name"] == "TOTAL" and int(rows[-1]["macs"]) == p.total_macs
    assert sum(int(r["params"]) for r in rows[:-1]) == p.total_params == int(rows[-1]["params"])
    assert rows[0]["output_shape"] == "1x4x8x8"


def test_unmodelled_ops_are_listed_by_name(small_resnet, monkeypatch):
    from helpers import without_flop_rule

    from convc.ops import OpKind
    without_flop_rule(monkeypatch, OpKind.GLOBAL_AVERAGE_POOL)
    p = convc.profile(small_resnet)
    assert p.unmodelled == ["gap (GlobalAveragePool)"]
    text = render_text(p)
    assert "Not modelled" in text and "gap (GlobalAveragePool)" in text and "GlobalAveragePool*" in text
    assert json.loads(p.to_json())["unmodelled"] == ["gap (GlobalAveragePool)"]


# torchvision's published figures: GFLOPS (which are MACs) to two decimals and exact parameter counts
TORCHVISION = {
    "light_resnet50": (4.09, 25_557_032),
    "light_vgg19": (19.63, 143_667_240),
    "light_squeezenet": (0.35, 1_235_496),    # SqueezeNet 1.1 (1.0 has 0.82 GMACs and 1,248,424 params)
    "light_densenet121": (2.83, 7_978_856),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_light_models_reproduce_torchvision(name):
    gmacs, params = TORCHVISION[name]
    p = convc.profile(LIGHT / f"{name}.onnx")  # analysis only: nothing is executed
    assert round(p.total_macs / 1e9, 2) == gmacs
    assert p.total_params == params
    assert p.unmodelled == []


@pytest.mark.slow
def test_densenet_bn_statistics_are_separate():
    """DenseNet-121's BNs come from Caffe's BatchNorm+Scale: BN (fixed scale and B) then Mul and Add
    carrying the affine. PyTorch counts 2 per channel; the fixed values are reported apart."""
    p = convc.profile(LIGHT / "light_densenet121.onnx")
    assert p.total_params == 7_978_856
    assert p.total_bn_stats == 167_296  # 4 values (mean, var, fixed scale, fixed B) x 41,824 channels
    assert any("Concat" in why for _, why in p.notes), "the BNs after a Concat say why they did not fold"


# --- the command line ----------------------------------------------------------------------

def test_cli_table(small_resnet, capsys):
    assert main(["profile", str(small_resnet), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Conv+BatchNormalization+Relu" in out and "TOTAL" in out and "planned arena peak" in out
    assert "FLOPs = 2 x MACs" in out and "torchvision" in out


def test_cli_top_and_by_op(small_resnet, capsys):
    assert main(["profile", str(small_resnet), "-q", "--top", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[1] for line in out.split("TOTAL")[0].splitlines() if line[:2].strip().isdigit()]
    assert rows == ["conv2", "conv1"] and "2 costliest of 7 layers" in out
    assert main(["profile", str(small_resnet), "-q", "--by-op"]) == 0
    out = capsys.readouterr().out
    assert "By op type" in out and "Conv+Add+Relu" in out


def test_cli_json(small_resnet, capsys):
    assert main(["profile", str(small_resnet), "-q", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["macs"] == 16_916 and d["model"] == "small_resnet.onnx"


def test_cli_csv(small_resnet, capsys):
    assert main(["profile", str(small_resnet), "-q", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows][-1] == "TOTAL" and len(rows) == 8


def test_cli_help_states_the_convention(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("FLOPs = 2 x MACs", "bias excluded", "group-aware", "--measure", "--plot", "--top", "--by-op"):
        assert words in out


@pytest.fixture
def lenet_file(tmp_path) -> Path:
    path = tmp_path / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    return path


@pytest.mark.slow
def test_cli_measure(lenet_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["profile", str(lenet_file), "-q", "--measure", "--repeat", "3", "--threads", "1",
                 "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak"]["single_core_gflops"] > 1 and d["totals"]["seconds"] > 0
    convs = [l for l in d["layers"] if l["op"].startswith("Conv")]
    assert convs and all(l["seconds"] > 0 and l["gflops_per_second"] > 0 for l in convs)
    assert all(l["percent_of_single_core_peak"] > 0 for l in convs)
    # cached, unless measured under load (then flagged and not cached: tests/codegen/test_peak.py)
    assert (tmp_path / "cache" / "peak.json").exists() or any("peak measured under load" in w for w in d["warnings"])
    assert main(["profile", str(lenet_file), "-q", "--measure", "--repeat", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "% 1-core peak" in out


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot(lenet_file, tmp_path, suffix, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / f"profile{suffix}"
    args = ["profile", str(lenet_file), "-q", "--plot", str(path)]
    if suffix == ".svg":
        args += ["--measure", "--repeat", "2", "--threads", "1"]  # the time panel too
    assert main(args) == 0
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == ".png":
        assert data.startswith(PNG_SIGNATURE)
    else:
        assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"


def test_cli_plot_without_matplotlib_says_how_to_get_it(lenet_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["profile", str(lenet_file), "-q", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and "Traceback" not in err
    assert not (tmp_path / "p.png").exists()


def test_cli_plot_rejects_other_formats(lenet_file, tmp_path, capsys):
    assert main(["profile", str(lenet_file), "-q", "--plot", str(tmp_path / "p.pdf")]) == 2
    assert ".png or .svg" in capsys.readouterr().err


def test_rich_table_when_installed(small_resnet):
    pytest.importorskip("rich")
    from convc.report import render_rich
    buf = io.StringIO()
    render_rich(convc.profile(small_resnet), file=buf, width=250)
    out = buf.getvalue()
    assert "TOTAL" in out and "Conv+BN+Relu" in out  # abbreviated in the rich table (tests/test_profile_width.py)


def test_a_400_layer_model_stays_readable(tmp_path):
    """--top and --by-op keep a deep model's report short."""
    rng = np.random.default_rng(1)
    nodes, inits, x = [], [], "x"
    for i in range(200):
        inits.append(numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[1, 1]))
        nodes.append(helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"))
        x = f"s{i}"
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 2, 2])], initializer=inits)
    p = convc.profile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert len(p.layers) == 200 and all(l.op == "Conv+Sigmoid" for l in p.layers)
    assert len(render_text(p, top=10).splitlines()) < 40
    assert len(render_text(p, by_op=True).splitlines()) < 30
