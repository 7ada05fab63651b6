"""What a compiled model does with the arrays it is given: checks, copies, concurrent callers.

The model is built directly as a convc Graph (no ONNX importer involved) with two inputs and two
outputs: z = Relu(Conv3x3(x) + y), m = MaxPool2x2(z).
"""
from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest

import convc
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.pool import PoolAttrs
from convc.reference import run_reference

X_SHAPE = (2, 3, 8, 8)
Y_SHAPE = (2, 4, 8, 8)
RTOL = 1e-4


def build_graph() -> Graph:
    rng = np.random.default_rng(1)
    g = Graph("two_in_two_out")
    g.add_tensor("x", X_SHAPE, np.float32, TensorKind.INPUT)
    g.add_tensor("y", Y_SHAPE, np.float32, TensorKind.INPUT)
    g.add_constant("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    g.add_constant("b", rng.standard_normal(4).astype(np.float32))
    g.add_op(OpKind.CONV, ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), ["x", "w", "b"], ["c"])
    g.add_op(OpKind.ADD, NoAttrs(), ["c", "y"], ["s"])
    g.add_op(OpKind.RELU, NoAttrs(), ["s"], ["z"])
    g.add_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), ["z"], ["m"])
    g.outputs = ["z", "m"]
    return g


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


@pytest.fixture(scope="module")
def model(graph) -> convc.CompiledModel:
    return convc.compile(graph)


def feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal(X_SHAPE).astype(np.float32),
            "y": rng.standard_normal(Y_SHAPE).astype(np.float32)}


def assert_matches_reference(graph: Graph, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    expected = run_reference(graph, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
    assert list(outputs) == list(expected)
    for name, want in expected.items():
        got = outputs[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
        assert err < RTOL, f"{name}: max relative error {err:.3g}"


def test_signature(model):
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [
        ("x", X_SHAPE, np.dtype(np.float32)), ("y", Y_SHAPE, np.dtype(np.float32))]
    assert [(s.name, s.shape) for s in model.outputs] == [("z", Y_SHAPE), ("m", (2, 4, 4, 4))]


def test_run_and_call_agree_with_reference(model, graph):
    f = feeds()
    outs = model.run(f)
    assert_matches_reference(graph, f, outs)
    z, m = model(f["x"], f["y"])  # several outputs: a tuple in output order
    np.testing.assert_array_equal(z, outs["z"])
    np.testing.assert_array_equal(m, outs["m"])


# --- feeds that do not match the signature ------------------------------------------------

def test_missing_feed_names_the_input(model):
    with pytest.raises(convc.InputError, match=r"missing input\(s\) \['y'\]"):
        model.run({"x": feeds()["x"]})


def test_extra_feed_names_the_input(model):
    with pytest.raises(convc.InputError, match=r"unknown input\(s\) \['bias'\]") as info:
        model.run({**feeds(), "bias": np.zeros(3, np.float32)})
    assert "['x', 'y']" in str(info.value)  # and says what the model does take


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 3, 8), (2, 3, 8, 9), (2, 8, 8, 3)])
def test_wrong_shape_names_input_and_both_shapes(model, shape):
    bad = {**feeds(), "x": np.zeros(shape, np.float32)}
    with pytest.raises(convc.InputError) as info:
        model.run(bad)
    msg = str(info.value)
    assert "'x'" in msg and str(shape) in msg and str(X_SHAPE) in msg


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.float16])
def test_wrong_dtype_names_input_and_both_dtypes(model, dtype):
    bad = {**feeds(), "y": feeds()["y"].astype(dtype)}
    with pytest.raises(convc.InputError) as info:
        model.run(bad)
    msg = str(info.value)
    assert "'y'" in msg and np.dtype(dtype).name in msg and "float32" in msg


def test_input_error_is_a_value_error(model):
    with pytest.raises(ValueError):
        model.run({})


@pytest.mark.parametrize("n", [0, 1, 3])
def test_wrong_number_of_positional_arrays(model, n):
    arrays = [feeds()["x"], feeds()["y"], feeds()["y"]][:n]
    with pytest.raises(convc.InputError, match=rf"takes 2 input\(s\) \['x', 'y'\], got {n} array"):
        model(*arrays)


# --- arrays whose memory is not C-contiguous are copied --------------------------------------

def _non_contiguous(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "strided":  # every other column of a twice-as-wide array
        wide = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)
        wide[..., ::2] = a
        view = wide[..., ::2]
    elif kind == "transposed":  # NHWC memory seen as NCHW: same values, permuted strides
        view = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif kind == "fortran":
        view = np.asfortranarray(a)
    elif kind == "misaligned":  # float32 data starting one byte into a buffer
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = buf[1:].view(np.float32).reshape(a.shape)
        view[...] = a
    elif kind == "byteswapped":
        view = a.astype(a.dtype.newbyteorder(">"))
    else:
        raise AssertionError(kind)
    np.testing.assert_array_equal(view, a)
    return view


@pytest.mark.parametrize("kind", ["strided", "transposed", "fortran", "misaligned"])
def test_non_contiguous_input_gives_the_right_answer(model, graph, kind):
    f = feeds(3)
    view = _non_contiguous(kind, f["x"])
    assert not (view.flags.c_contiguous and view.flags.aligned)
    outs = model.run({"x": view, "y": f["y"]})
    assert_matches_reference(graph, f, outs)
    np.testing.assert_array_equal(view, f["x"])  # the caller's array is untouched


def test_byteswapped_input_is_rejected_or_correct(model, graph):
    f = feeds(4)
    view = _non_contiguous("byteswapped", f["x"])
    try:
        outs = model.run({"x": view, "y": f["y"]})
    except convc.InputError as e:  # '>f4' is not float32 for numpy's dtype equality on some versions
        assert "'x'" in str(e)
    else:
        assert_matches_reference(graph, f, outs)


def test_outputs_are_fresh_arrays(model):
    a = model.run(feeds(5))
    b = model.run(feeds(6))
    assert not np.shares_memory(a["z"], b["z"])
    assert a["z"].flags.c_contiguous and a["z"].flags.owndata


# --- concurrency -----------------------------------------------------------------------------

def test_two_threads_share_one_model(model, graph):
    inputs = [feeds(100 + i) for i in range(8)]
    expected = [run_reference(graph, f) for f in inputs]

    def call(i: int) -> int:
        k = i % len(inputs)
        outs = model.run(inputs[k])
        for name, want in expected[k].items():
            err = np.max(np.abs(outs[name] - want)) / np.max(np.abs(want))
            assert err < RTOL, f"call {i}, {name}: relative error {err:.3g}"
        return k

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(call, range(400)))
    assert len(done) == 400


# --- batch sizes and options the caller gets wrong ----------------------------------------------
# (a symbolic-batch ONNX model: other batch sizes compile on first use)

@pytest.fixture(scope="module")
def lenet() -> convc.CompiledModel:
    from convc.models import lenet5
    return convc.compile(lenet5(), threads=1)


def test_zero_batch_feed_is_an_input_error_about_the_feed(lenet):
    """Was: ModelImportError 'batch=0 must be a positive integer', a parameter nobody passed."""
    with pytest.raises(convc.InputError, match=r"input 'input' has shape \(0, 1, 28, 28\): a batch of 0; the batch "
                                               r"must be at least 1"):
        lenet(np.zeros((0, 1, 28, 28), np.float32))


def test_huge_batch_feed_is_refused_before_compiling_or_allocating(lenet, monkeypatch):
    """A broadcast view of 2**31 samples costs no memory; convc compiled a variant for it and then
    failed with numpy's MemoryError allocating a 53.9 TiB arena."""
    compiled = []
    monkeypatch.setattr(lenet, "_respecialize", lambda n: compiled.append(n))
    view = np.broadcast_to(np.zeros((1, 1, 28, 28), np.float32), (2**31, 1, 28, 28))
    with pytest.raises(convc.InputError, match=r"input 'input' \(shape \(2147483648, 1, 28, 28\), float32\) needs "
                                               r"6734508720128 bytes \(6.1 TiB\), more than convc allows"):
        lenet(view)
    assert compiled == []


def test_batch_whose_arena_exceeds_the_limit_is_an_input_error(lenet, monkeypatch):
    """The input itself fits, but the model built for that batch does not: still the feed's fault."""
    monkeypatch.setenv("CONVC_MAX_BYTES", "256K")  # the input of batch 64 is 200 KiB; its activations are more
    with pytest.raises(convc.InputError, match=r"input 'input' has batch 64; the model cannot be built for it: .*"
                                               r"needs \d+ bytes .*more than convc allows .*CONVC_MAX_BYTES=256K"):
        lenet(np.zeros((64, 1, 28, 28), np.float32))


def test_compiling_for_a_huge_batch_names_the_input_and_the_bytes():
    from convc.models import lenet5
    with pytest.raises(convc.ModelImportError, match=r"graph input 'input' \(shape \(2147483648, 1, 28, 28\), "
                                                     r"float32\) needs 6734508720128 bytes \(6.1 TiB\)"):
        convc.compile(lenet5(), batch=2**31)


def test_graph_tensors_and_arena_are_checked_without_any_importer(graph, monkeypatch):
    g = Graph("big")
    with pytest.raises(convc.GraphError, match=r"tensor 'x' \(shape \(4611686018427387904, 4\), float32\) needs"):
        g.add_tensor("x", (2**62, 4), np.float32, TensorKind.INPUT)
    assert not g.has_tensor("x")
    monkeypatch.setenv("CONVC_MAX_BYTES", str(4 * 8 * 8 * 4 * 2 + 64))  # each tensor fits, the arena does not
    with pytest.raises(convc.GraphError, match=r"the activation arena of graph 'two_in_two_out' needs \d+ bytes"):
        convc.compile(graph)


BAD_OPTIONS = [
    ("batch", 2.5, "batch=2.5 must be a positive integer, not float"),   # was silently 2
    ("batch", 0, "batch=0 must be a positive integer"),
    ("batch", True, "batch=True must be a positive integer, not bool"),
    ("batch", "4", "batch='4' must be a positive integer, not str"),
    ("threads", 0, "threads=0 must be a positive integer"),              # was accepted as 1
    ("threads", -2, "threads=-2 must be a positive integer"),
    ("threads", 1.0, "threads=1.0 must be a positive integer, not float"),
]


@pytest.mark.parametrize("entry", ["compile", "InferenceSession", "profile"])
@pytest.mark.parametrize("option, value, message", BAD_OPTIONS)
def test_bad_batch_and_threads_are_refused(entry, option, value, message):
    from convc.models import lenet5
    call = {"compile": convc.compile, "InferenceSession": convc.InferenceSession, "profile": convc.profile}[entry]
    with pytest.raises(convc.InputError, match=re.escape(message)):
        call(lenet5(), **{option: value})


@pytest.mark.parametrize("kwargs, message", [
    ({"threads": 0}, "threads=0 must be a positive integer"),
    ({"threads": False}, "threads=False must be a positive integer, not bool"),
    ({"input_shape": (2.5, 1, 28, 28)}, "input_shape=(2.5, 1, 28, 28) must be (batch, channels, ...) with positive "
                                        "integer sizes"),
    ({"input_shape": (0, 1, 28, 28)}, "input_shape=(0, 1, 28, 28) must be"),
])
def test_trainer_refuses_bad_options(kwargs, message):
    from convc.models import lenet5
    with pytest.raises(convc.InputError, match=re.escape(message)):
        convc.Trainer(lenet5(), **{"input_shape": (2, 1, 28, 28), **kwargs})


def test_numpy_integers_are_fine():
    from convc.models import lenet5
    model = convc.compile(lenet5(), batch=np.int64(2), threads=np.int32(1))
    assert model.batch == 2 and model.inputs[0].shape == (2, 1, 28, 28)
