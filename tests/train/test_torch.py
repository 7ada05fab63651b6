"""Against PyTorch on the same weights: gradients of every op family, whole-model training steps."""
from __future__ import annotations

import numpy as np
import pytest
from convc.frontend.onnx import import_onnx
from convc.passes.autodiff.training import build_training

import convc
from convc.driver import compile_bound
from convc.options import resolve_options
from train import nets

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_digits(model_proto, hw: int = 8):
    """The PyTorch twin of nets.digits_cnn (no dropout), with the ONNX model's weights."""
    from onnx import numpy_helper
    w = {t.name: torch.tensor(numpy_helper.to_array(t).copy()) for t in model_proto.graph.initializer}
    c1, c2 = w["conv1.weight"].shape[0], w["conv2.weight"].shape[0]
    bias = "conv1.bias" in w
    m = torch.nn.Sequential(torch.nn.Conv2d(1, c1, 3, padding=1, bias=bias), torch.nn.BatchNorm2d(c1), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(c1, c2, 3, padding=1, bias=bias),
                            torch.nn.BatchNorm2d(c2),
                            torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(c2 * (hw // 4) ** 2, 10))
    names = {"0": "conv1", "1": "bn1", "4": "conv2", "5": "bn2", "9": "fc"}
    sd = {f"{k}.{suffix}": w[f"{v}.{suffix}"] for k, v in names.items()
          for suffix in ("weight", "bias", "running_mean", "running_var") if f"{v}.{suffix}" in w}
    m.load_state_dict(sd, strict=False)
    return m, names


def test_model_gradients_match_pytorch(rng):
    proto = nets.digits_cnn(c1=6, c2=8, dropout=0.0)
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 5)
    plan = build_training(import_onnx(proto, batch=5), loss="cross_entropy")
    state = {n: np.array(v, copy=True) for n, v in plan.initial.items()}
    state[plan.lr] = np.zeros(1, np.float32)
    out = compile_bound(plan.plan, state, resolve_options(threads=1)).run({plan.x: x, plan.labels: y})
    m, names = torch_digits(proto)
    m.train()
    loss = F.cross_entropy(m(torch.tensor(x)), torch.tensor(y))
    loss.backward()
    assert out[plan.loss][0] == pytest.approx(loss.item(), rel=1e-5)
    # a bias followed by BatchNorm has a zero gradient: both sides hold rounding noise there
    scale = max(np.abs(p.grad.numpy()).max() for p in m.parameters())
    for k, v in names.items():
        for suffix in ("weight", "bias"):
            if f"{v}.{suffix}" not in plan.grads:
                continue
            ours = out[plan.grads[f"{v}.{suffix}"]]
            theirs = getattr(m[int(k)], suffix).grad.numpy()
            np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5 * scale, err_msg=f"{v}.{suffix}")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.slow
def test_training_matches_pytorch(rng, opt):
    # no conv bias: before BatchNorm its gradient is zero up to rounding, which Adam would amplify to +-lr
    proto = nets.digits_cnn(c1=6, c2=8, dropout=0.0, conv_bias=False)
    ours = convc.Trainer(proto, input_shape=(8, 1, 8, 8), optimizer=convc.optim.SGD(0.05, momentum=0.9)
                         if opt == "sgd" else convc.optim.Adam(1e-2))
    m, names = torch_digits(proto)
    topt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9) if opt == "sgd" else \
        torch.optim.Adam(m.parameters(), 1e-2)
    for step in range(5):
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        topt.zero_grad()
        loss = F.cross_entropy(m(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        topt.step()
        assert ours.step(x, y) == pytest.approx(loss.item(), rel=1e-4, abs=1e-5), f"step {step}"
    state = ours.state_dict()
    for k, v in names.items():
        layer = m[int(k)]
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            if hasattr(layer, suffix) and getattr(layer, suffix) is not None:
                theirs = getattr(layer, suffix).detach().numpy()
                np.testing.assert_allclose(state[f"{v}.{suffix}"], theirs, rtol=2e-3, atol=2e-4,
                                           err_msg=f"{v}.{suffix}")
    m.eval()
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ours.predict(x), m(torch.tensor(x)).detach().numpy(), rtol=1e-3, atol=1e-4)


def test_max_pool_ties_like_pytorch():
    x = np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 3.0, 2.0, 2.0], [0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 1.0, 5.0]]]],
                 np.float32)
    t = torch.tensor(x, requires_grad=True)
    F.max_pool2d(t, 2).sum().backward()
    from convc.ops import OpKind, op_def
    from convc.ops.pool import PoolAttrs
    from convc.ops.pool_grad import PoolGradAttrs
    (dx,) = op_def(OpKind.MAX_POOL_GRAD).reference(
        PoolGradAttrs(PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), x.shape), x, np.ones((1, 1, 2, 2), np.float32))
    np.testing.assert_array_equal(dx, t.grad.numpy())


@pytest.mark.parametrize("name", ["leaky_relu", "sigmoid", "tanh", "elu", "selu", "softplus", "softsign", "softmax",
                                  "avg_pool_pad", "conv_group_stride", "bce", "mse", "gemm_transpose"])
def test_op_gradients_match_pytorch(rng, name):
    """Each op's compiled gradient (via a one-op graph and convc's backward) against torch.autograd."""
    from convc.driver import compile_training_graph as compile_graph

    from convc.ops import NoAttrs, OpKind
    from convc.ops.conv import ConvAttrs
    from convc.ops.elementwise import EluAttrs, LeakyReluAttrs, SeluAttrs
    from convc.ops.gemm import GemmAttrs
    from convc.ops.pool import PoolAttrs
    from convc.ops.softmax import SoftmaxAttrs
    from train.grad_helpers import grad_graph
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    if name in ("bce", "mse"):
        p = rng.uniform(0.05, 0.95, (4, 5)).astype(np.float32)
        t = rng.uniform(0, 1, (4, 5)).astype(np.float32)
        kind, grad = (OpKind.BCE_LOSS, OpKind.BCE_LOSS_GRAD) if name == "bce" else (OpKind.MSE_LOSS, OpKind.MSE_LOSS_GRAD)
        from convc.ir import Graph, TensorKind
        g = Graph(name)
        g.add_tensor("p", p.shape, np.float32, TensorKind.INPUT)
        g.add_tensor("t", t.shape, np.float32, TensorKind.INPUT)
        g.add_op(kind, NoAttrs(), ["p", "t"], ["loss"])
        g.add_op(grad, NoAttrs(), ["p", "t"], ["dp"])
        g.outputs = ["loss", "dp"]
        out = compile_graph(g).run({"p": p, "t": t})
        tp = torch.tensor(p, requires_grad=True)
        tl = (F.binary_cross_entropy if name == "bce" else F.mse_loss)(tp, torch.tensor(t))
        tl.backward()
        assert out["loss"][0] == pytest.approx(tl.item(), rel=1e-5)
        np.testing.assert_allclose(out["dp"], tp.grad.numpy(), rtol=1e-4, atol=1e-7)
        return
    cases = {
        "leaky_relu": (OpKind.LEAKY_RELU, LeakyReluAttrs(0.2), [x], lambda a: F.leaky_relu(a[0], 0.2)),
        "sigmoid": (OpKind.SIGMOID, NoAttrs(), [x], lambda a: torch.sigmoid(a[0])),
        "tanh": (OpKind.TANH, NoAttrs(), [x], lambda a: torch.tanh(a[0])),
        "elu": (OpKind.ELU, EluAttrs(0.7), [x], lambda a: F.elu(a[0], 0.7)),
        "selu": (OpKind.SELU, SeluAttrs(), [x], lambda a: F.selu(a[0])),
        "softplus": (OpKind.SOFTPLUS, NoAttrs(), [x], lambda a: F.softplus(a[0])),
        "softsign": (OpKind.SOFTSIGN, NoAttrs(), [x], lambda a: F.softsign(a[0])),
        "softmax": (OpKind.SOFTMAX, SoftmaxAttrs(1), [x], lambda a: torch.softmax(a[0], 1)),
        "avg_pool_pad": (OpKind.AVERAGE_POOL, PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), count_include_pad=False),
                         [x], lambda a: F.avg_pool2d(a[0], 3, 2, 1, count_include_pad=False)),
        "conv_group_stride": (OpKind.CONV, ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),
                              [x, rng.standard_normal((6, 2, 3, 3)).astype(np.float32),
                               rng.standard_normal(6).astype(np.float32)],
                              lambda a: F.conv2d(a[0], a[1], a[2], stride=2, padding=1, groups=2)),
        "gemm_transpose": (OpKind.GEMM, GemmAttrs(trans_b=True), [x.reshape(3, -1)[:, :20],
                                                                 rng.standard_normal((7, 20)).astype(np.float32),
                                                                 rng.standard_normal(7).astype(np.float32)],
                           lambda a: F.linear(a[0], a[1], a[2])),
    }
    kind, attrs, inputs, fn = cases[name]
    wrt = list(range(len(inputs)))
    g, names = grad_graph(kind, attrs, inputs, wrt)
    targs = [torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in inputs]
    y = fn(targs)
    dy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.tensor(dy))
    got = compile_graph(g).run({**{n: np.ascontiguousarray(a) for n, a in zip(names, inputs)}, "dy": dy})
    for i, out in zip(wrt, g.outputs):
        theirs = targs[i].grad.numpy()
        np.testing.assert_allclose(got[out], theirs, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(theirs).max()),
                                   err_msg=f"{name} input {i}")
