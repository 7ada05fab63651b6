"""Training fidelity against PyTorch (skipped without torch): the same weights in, 20 steps of SGD with
momentum and of Adam on the same batches, losses and weights within float32 drift of PyTorch's.

Nets, at batch 16 and 32x32 (the CIFAR sizes people train at): a ResNet-style net (BN, residual adds, a
strided projection shortcut), a MobileNetV2-style net (inverted residuals, depthwise convs, ReLU6), and
a net with BatchNorm and Dropout exported with ``TrainingMode.TRAINING`` (BatchNormalization
training_mode=1, Dropout with its training_mode input). Its Dropout has ratio 0, so both sides compute
the same numbers: convc draws its masks from its own generator, which no test can align with PyTorch's;
inverted dropout at a real ratio is checked statistically in test_training_mode.py. A fourth net gathers
the ops whose gradients are compositions (PReLU, SE mean, nearest upsampling, chomp, channel shuffle,
amax, log_softmax), trained with SGD with momentum.

Every net is exported in training mode: an eval-mode export folds BatchNorm into the convolutions.

Some parameters have no gradient in exact arithmetic: the bias of a BatchNorm whose output reaches only
a convolution and another BatchNorm (MobileNetV2's projection without a residual), which subtracts it
again. Their float32 gradients are round-off, and Adam, which divides by the gradient's own scale, turns
round-off into steps of the full learning rate in either direction; so under Adam those parameters and
the running statistics they feed are not compared (found by a float64 backward of PyTorch's net). The
losses are compared at every step for every net."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import convc

torch = pytest.importorskip("torch")
nn = torch.nn

BATCH, HW, CLASSES, STEPS = 16, 32, 10, 20


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, mid, 1, act=nn.ReLU6), conv_bn(mid, mid, 3, stride, mid, act=nn.ReLU6),
                                  conv_bn(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def resnet():
    return nn.Sequential(conv_bn(3, 8), Basic(8, 8, 1), Basic(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, CLASSES))


def mobilenet_v2():
    return nn.Sequential(conv_bn(3, 8, stride=2, act=nn.ReLU6), InvertedResidual(8, 8, 1, 1),
                         InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4),
                         conv_bn(12, 32, 1, act=nn.ReLU6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))


def bn_dropout():
    return nn.Sequential(conv_bn(3, 8), nn.Dropout(0.0), conv_bn(8, 16, stride=2), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.0), nn.Linear(16 * 8 * 8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, CLASSES))


NETS = {"resnet": resnet, "mobilenet_v2": mobilenet_v2, "bn_dropout": bn_dropout}
OPTIMIZERS = {
    "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda: convc.optim.SGD(0.05, momentum=0.9)),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-3), lambda: convc.optim.Adam(1e-3)),
}


def export_training(net, x) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.from_numpy(x), f, training=torch.onnx.TrainingMode.TRAINING, input_names=["x"],
                          output_names=["y"], dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(f.getvalue())


def round_off_only(net, x, y) -> set[str]:
    """Parameters whose gradient is zero in exact arithmetic (float64 gradient below 1e-9 of the largest)."""
    net64 = copy.deepcopy(net).double()
    nn.functional.cross_entropy(net64(torch.from_numpy(x).double()), torch.from_numpy(y)).backward()
    largest = max(float(p.grad.abs().max()) for p in net64.parameters())
    return {n for n, p in net64.named_parameters() if float(p.grad.abs().max()) < 1e-9 * largest}


@pytest.fixture
def one_torch_thread():
    """PyTorch's thread pool fights the other test runs for the cores; one thread keeps this test's time sane."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(19)
    return [(rng.standard_normal((BATCH, 3, HW, HW)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
            for _ in range(4)]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("net_name", list(NETS))
def test_training_matches_pytorch(batches, one_torch_thread, net_name, optimizer):
    torch.manual_seed(0)
    net = NETS[net_name]().train()
    proto = export_training(net, batches[0][0])
    if net_name == "bn_dropout":
        kinds = {n.op_type: n for n in proto.graph.node}
        assert any(a.name == "training_mode" and a.i == 1 for a in kinds["BatchNormalization"].attribute)
        assert "Dropout" in kinds
    # the export ran the net once in training mode (its running statistics moved): both start from the file
    initial = {t.name: numpy_helper.to_array(t).copy() for t in proto.graph.initializer}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()}, strict=False)
    skipped = round_off_only(net, *batches[0]) if optimizer == "adam" else set()
    if skipped:
        skipped |= {k for k in initial if k.endswith(("running_mean", "running_var"))}
    make_torch_opt, make_convc_opt = OPTIMIZERS[optimizer]
    opt = make_torch_opt(net.parameters())
    trainer = convc.Trainer(proto, input_shape=(BATCH, 3, HW, HW), optimizer=make_convc_opt(), threads=1)

    start = trainer.state_dict()
    # a weight the importer transposed at import (a Linear without bias: MatMul of a Transpose) trains
    # under the folded tensor's name: found by its value
    transposed = {}
    for name, p in net.state_dict().items():
        if name not in start and p.dim() == 2:
            transposed[name] = next(k for k, v in start.items() if np.array_equal(v, p.numpy().T))
    torch_losses, convc_losses = [], []
    for step in range(STEPS):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
        convc_losses.append(trainer.step(x, y))

    # float32 drift: the two accumulate in different orders, and 20 steps amplify it a little
    np.testing.assert_allclose(convc_losses, torch_losses, rtol=2e-3, atol=1e-5)
    assert torch_losses[-1] < torch_losses[0]  # the nets learn: the comparison is not of two idle runs
    mine = trainer.state_dict()
    theirs = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    compared = 0
    for name, want in theirs.items():
        if name.endswith("num_batches_tracked") or name in skipped:
            continue
        got = mine[transposed[name]].T if name in transposed else mine[name]
        before = start[transposed[name]].T if name in transposed else start[name]
        moved = float(np.linalg.norm(want - before))
        err = float(np.linalg.norm(got - want))
        # within 2 % of how far training moved the tensor (L2 norms), or float32 round-off of its values
        assert err <= max(0.02 * moved, 1e-6 * float(np.linalg.norm(want)), 1e-7), \
            f"{net_name}/{optimizer}: {name} differs by {err:.3g} (L2; training moved it {moved:.3g})"
        compared += 1
    assert compared == len([n for n in theirs if not n.endswith("num_batches_tracked")]) - len(skipped) > 0


class ModernOps(nn.Module):
    """The ops whose gradients are compositions, as PyTorch code writes them: PReLU (its slopes train),
    a squeeze-and-excitation block (mean over H, W), nearest upsampling, a TCN-style chomp of the last
    column, a ShuffleNet channel shuffle, a max over H, W (amax) and log_softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8))
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = x * torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        x = nn.functional.leaky_relu(self.mix(x)[:, :, :, :-1], 0.1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return nn.functional.log_softmax(self.fc(x.amax((2, 3))), dim=1)


@pytest.mark.slow
def test_modern_ops_train_like_pytorch(batches, one_torch_thread):
    """SGD with momentum, 20 steps at batch 16 and 15x15 inputs (odd: upsampled to 30x30, chomped to 30x29);
    the log_softmax output trains with cross-entropy on its log-probabilities, as nll_loss does."""
    torch.manual_seed(0)
    net = ModernOps().train()
    x0 = batches[0][0][:, :, :15, :15].copy()
    proto = export_training(net, x0)
    kinds = {n.op_type for n in proto.graph.node}
    assert {"PRelu", "ReduceMean", "Resize", "Slice", "ReduceMax", "LogSoftmax"} <= kinds, kinds
    trainer = convc.Trainer(proto, input_shape=x0.shape, optimizer=convc.optim.SGD(0.05, momentum=0.9),
                            threads=1)
    start = trainer.state_dict()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    torch_losses, convc_losses = [], []
    for step in range(STEPS):
        x, y = batches[step % len(batches)]
        x = np.ascontiguousarray(x[:, :, :15, :15])
        opt.zero_grad()
        loss = nn.functional.nll_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
        convc_losses.append(trainer.step(x, y))
    np.testing.assert_allclose(convc_losses, torch_losses, rtol=2e-3, atol=1e-5)
    assert torch_losses[-1] < torch_losses[0]
    mine = trainer.state_dict()
    slope = net.stem[1].weight.detach().numpy()
    name = next(k for k, v in start.items() if v.size == 8 and np.allclose(v, 0.25))  # PReLU's initial slopes
    moved = np.linalg.norm(slope - 0.25)
    assert moved > 1e-4 and np.linalg.norm(mine[name].reshape(-1) - slope) <= 0.02 * moved
