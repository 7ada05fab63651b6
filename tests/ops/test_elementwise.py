"""Unary activations, Identity/Dropout, and broadcasting Add/Mul/Sum/Sub/Div/Max/Min/PRelu."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

import convc
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import ClipAttrs, DropoutAttrs, EluAttrs, HardSigmoidAttrs, LeakyReluAttrs, SeluAttrs

# zeros of both signs, large magnitudes (exp overflows float32 beyond ~88), values around 0 and 1
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, 88.0, -88.0, 89.0, -89.0,
                    100.0, -100.0, 1e4, -1e4, 3e38, -3e38, 1e-3, -1e-3], dtype=np.float32)


def unary_data(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random normal values scaled by 5, with SPECIAL written over the first elements."""
    x = (5 * rng.standard_normal(shape)).astype(np.float32)
    flat = x.reshape(-1)
    n = min(flat.size, SPECIAL.size)
    flat[:n] = SPECIAL[:n]
    return x


UNARY = [
    (OpKind.RELU, NoAttrs()),
    (OpKind.LEAKY_RELU, LeakyReluAttrs()),
    (OpKind.SIGMOID, NoAttrs()),
    (OpKind.TANH, NoAttrs()),
    (OpKind.IDENTITY, NoAttrs()),
    (OpKind.DROPOUT, DropoutAttrs(0.3)),
]

# the references overflow exp() on purpose (Sigmoid at -100 is exp(100) = inf, then 1/inf = 0)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")


@pytest.mark.parametrize("shape", [(1,), (37,), (2, 3, 5, 7)])
@pytest.mark.parametrize("kind,attrs", UNARY, ids=[k.value for k, _ in UNARY])
def test_unary(rng, kind, attrs, shape):
    check_op(kind, attrs, [unary_data(rng, shape)])


@pytest.mark.parametrize("kind", [OpKind.SIGMOID, OpKind.TANH])
def test_saturating_at_large_magnitudes(rng, kind):
    x = np.array([100.0, -100.0, 1e4, -1e4, 3e38, -3e38, 88.7, -88.7, 104.0, -104.0], dtype=np.float32)
    y = check_op(kind, NoAttrs(), [x])
    assert not np.isnan(y).any()
    lo = 0.0 if kind is OpKind.SIGMOID else -1.0
    assert np.all((y >= lo) & (y <= 1.0))


def test_tanh_tiny_values_relative_accuracy(rng):
    """Near 0, tanh(x) ~ x: the absolute-below-1 metric of check_op cannot see a wrong digit here,
    so the relative error is checked directly (1 - 2/(exp(2x)+1) would lose everything)."""
    x = np.array([1e-3, -1e-3, 1e-5, -3e-6, 1e-8, -1e-8, 1e-20, -1e-30, 1e-37, 2.5e-4], dtype=np.float32)
    y = check_op(OpKind.TANH, NoAttrs(), [x])
    expected = np.tanh(x.astype(np.float64))
    rel = np.abs(y.astype(np.float64) - expected) / np.abs(expected)
    assert rel.max() < 1e-6, f"relative error {rel.max():.3g} at x={x[rel.argmax()]}"


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.2, 1.0, 0.0, -0.5, 3.0])
def test_leaky_relu_alpha(rng, alpha):
    check_op(OpKind.LEAKY_RELU, LeakyReluAttrs(alpha), [unary_data(rng, (3, 29))])


@pytest.mark.parametrize("kind,attrs", UNARY[:4], ids=[k.value for k, _ in UNARY[:4]])
def test_nan_propagates(rng, kind, attrs):
    x = unary_data(rng, (4, 8))
    x[0, 0] = x[1, 3] = x[3, 7] = np.nan
    y = check_op(kind, attrs, [x])  # check_op requires the NaN positions to match both references
    assert np.isnan(y[0, 0]) and np.isnan(y[1, 3]) and np.isnan(y[3, 7])
    assert np.isnan(y).sum() == 3


@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.MUL, OpKind.SUM])
def test_binary_ieee_special_values(kind):
    """NaN propagates and infinities follow IEEE rules (inf - inf = NaN, 0 * inf = NaN)."""
    x = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, np.inf, 0.0, -0.0], dtype=np.float32)
    y = np.array([2.0, 3.0, np.nan, 4.0, 5.0, -np.inf, np.inf, 1.0], dtype=np.float32)
    check_op(kind, NoAttrs(), [x, y])


BINARY_SHAPES = [
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (3, 1, 1)),     # per-channel
    ((2, 3, 4, 5), (1,)),
    ((2, 3, 4, 5), (5,)),
    ((2, 3, 4, 5), ()),            # scalar
    ((3, 1, 1), (2, 3, 4, 5)),     # the small operand first
    ((1, 3, 1, 5), (2, 1, 4, 1)),  # the output is bigger than both inputs
    ((1, 3, 1, 1), (2, 1, 4, 5)),
    ((3, 1), (1, 4)),
    ((7,), (3, 1)),
]


@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}".replace(" ", ""))
@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.MUL])
def test_binary_broadcast(rng, kind, shapes):
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    check_op(kind, NoAttrs(), [a, b])


@pytest.mark.parametrize("const", [frozenset({0}), frozenset({1})], ids=["x-const", "y-const"])
@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.MUL])
def test_binary_constant_operand(rng, kind, const):
    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 1, 1)).astype(np.float32)
    check_op(kind, NoAttrs(), [a, b], const=const)


@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.MUL, OpKind.SUM])
def test_same_tensor_twice(kind):
    """x + x and x * x: one graph tensor bound to both operands of the kernel."""
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    g = Graph("twice")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_op(kind, NoAttrs(), ["x", "x"], ["y"])
    g.outputs = ["y"]
    g.verify()
    y = convc.compile(g).run({"x": x})["y"]
    np.testing.assert_array_equal(y, x * x if kind is OpKind.MUL else x + x)


@pytest.mark.parametrize("shapes", [
    [(2, 3, 4)],
    [(2, 3, 4), (2, 3, 4)],
    [(2, 3, 4), (4,)],
    [(2, 1, 4), (3, 1), (1,)],
    [(2, 1, 4), (1, 3, 1), ()],                     # the output is bigger than every input
    [(2, 3, 4), (1, 3, 1), (4,), (2, 1, 1)],
    [(5,), (3, 1), (2, 1, 1), (2, 3, 5)],
], ids=lambda s: "+".join(str(x) for x in s).replace(" ", ""))
def test_sum(rng, shapes):
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    check_op(OpKind.SUM, NoAttrs(), xs, const=frozenset({len(xs) - 1}) if len(xs) > 2 else frozenset())


# --- activations added for ONNX coverage: Clip (ReLU6), Elu, Selu, HardSigmoid, HardSwish, Softplus, Softsign
NEW_UNARY = [
    (OpKind.CLIP, ClipAttrs(0.0, 6.0)),
    (OpKind.CLIP, ClipAttrs(-1.5, 0.5)),
    (OpKind.ELU, EluAttrs()),
    (OpKind.ELU, EluAttrs(0.3)),
    (OpKind.SELU, SeluAttrs()),
    (OpKind.SELU, SeluAttrs(2.0, 0.5)),
    (OpKind.HARD_SIGMOID, HardSigmoidAttrs()),
    (OpKind.HARD_SIGMOID, HardSigmoidAttrs(0.5, 0.1)),
    (OpKind.HARD_SWISH, NoAttrs()),
    (OpKind.SOFTPLUS, NoAttrs()),
    (OpKind.SOFTSIGN, NoAttrs()),
]
NEW_IDS = ["relu6", "clip", "elu", "elu-alpha", "selu", "selu-attrs", "hard-sigmoid", "hard-sigmoid-attrs",
           "hard-swish", "softplus", "softsign"]


@pytest.mark.parametrize("shape", [(37,), (2, 3, 5, 7)])
@pytest.mark.parametrize("kind,attrs", NEW_UNARY, ids=NEW_IDS)
def test_new_unary(rng, kind, attrs, shape):
    check_op(kind, attrs, [unary_data(rng, shape)])


@pytest.mark.parametrize("kind,attrs", NEW_UNARY, ids=NEW_IDS)
def test_new_unary_nan_propagates(rng, kind, attrs):
    x = unary_data(rng, (4, 8))
    x[0, 0] = x[3, 7] = np.nan
    y = check_op(kind, attrs, [x])
    assert np.isnan(y).sum() == 2


def test_elu_selu_near_zero_keep_relative_accuracy():
    """alpha * (exp(x) - 1) in float32 cancels near 0; the kernel computes it in double."""
    x = np.array([-1e-3, -1e-5, -3e-7, -1e-8, -2.5e-4], dtype=np.float32)
    y = check_op(OpKind.ELU, EluAttrs(), [x])
    expected = np.expm1(x.astype(np.float64))
    assert (np.abs(y - expected) / np.abs(expected)).max() < 1e-6


def test_softplus_does_not_overflow():
    """log(1 + exp(x)) is inf beyond x ~ 88 in float32; the kernel returns ~x there."""
    x = np.array([80.0, 89.0, 100.0, 1e4, 3e38, -100.0, -1e4], dtype=np.float32)
    y = check_op(OpKind.SOFTPLUS, NoAttrs(), [x], onnx_check=False)  # onnx.reference overflows to inf here
    np.testing.assert_allclose(y[:5], x[:5], rtol=1e-6)
    assert np.all(y[5:] >= 0) and y[6] == 0.0


def test_clip_min_above_max_gives_max(rng):
    """ONNX: when min > max every value becomes max."""
    y = check_op(OpKind.CLIP, ClipAttrs(2.0, 1.0), [unary_data(rng, (3, 7))])
    assert np.all(y == 1.0)


@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}".replace(" ", ""))
@pytest.mark.parametrize("kind", [OpKind.SUB, OpKind.DIV, OpKind.MAX, OpKind.MIN])
def test_new_binary_broadcast(rng, kind, shapes):
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    check_op(kind, NoAttrs(), [a, b])


@pytest.mark.parametrize("kind", [OpKind.SUB, OpKind.DIV, OpKind.MAX, OpKind.MIN])
def test_new_binary_ieee_special_values(kind):
    """x / 0 is inf (no fast-math flags), NaN propagates through Max and Min like np.maximum/np.minimum."""
    x = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, 1.0, 0.0, -1.0], dtype=np.float32)
    y = np.array([2.0, 3.0, np.nan, np.inf, 5.0, 0.0, 0.0, 0.0], dtype=np.float32)
    check_op(kind, NoAttrs(), [x, y])


@pytest.mark.parametrize("shapes", [
    [(2, 3, 4)],
    [(2, 1, 4), (3, 1), (1,)],
    [(2, 3, 4), (1, 3, 1), (4,), (2, 1, 1)],
], ids=["one", "three", "four"])
@pytest.mark.parametrize("kind", [OpKind.MAX, OpKind.MIN])
def test_max_min_variadic(rng, kind, shapes):
    check_op(kind, NoAttrs(), [rng.standard_normal(s).astype(np.float32) for s in shapes])


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (2, 3, 4, 5), (5,)], ids=["shared", "per-channel",
                                                                                  "full", "last-axis"])
@pytest.mark.parametrize("const", [frozenset({1}), frozenset()], ids=["slope-const", "slope-input"])
def test_prelu(rng, slope_shape, const):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    check_op(OpKind.PRELU, NoAttrs(), [x, rng.standard_normal(slope_shape).astype(np.float32)], const=const)


def test_prelu_slope_must_not_grow_x():
    g = Graph("prelu")
    g.add_tensor("x", (3, 1), np.float32, TensorKind.INPUT)
    g.add_constant("s", np.ones((3, 4), np.float32))
    with pytest.raises(convc.GraphError, match=r"PRelu slope.shape=\(3, 4\) does not broadcast to X.shape=\(3, 1\)"):
        g.add_op(OpKind.PRELU, NoAttrs(), ["x", "s"])
