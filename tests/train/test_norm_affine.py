"""The affine parameters of LayerNormalization, InstanceNormalization and GroupNormalization train, as
nn.LayerNorm's, nn.InstanceNorm2d(affine=True)'s and nn.GroupNorm's weight and bias do, under the
initializers' names and shapes; so does a layer scale (ConvNeXt's gamma, a Mul by a constant vector).

- gradients: ``convc.gradcheck`` (compiled float32 against float64 finite differences) of each
  normalization's scale and shift at batch 16 and odd spatial sizes;
- the parameters appear in ``trainer.parameters`` (roles "norm" for a scale, "bias" for a shift, neither
  decayed by ``l2=``) and change after a step, while the values that are no parameter (an
  InstanceNormalization scale from a Constant node, as PyTorch exports ``affine=False``; a scalar Mul)
  do not train;
- with torch: a ConvNeXt-style block and a GroupNorm conv net train 10 SGD-momentum steps like PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convc

try:
    import torch
except ImportError:  # the PyTorch comparisons skip; the rest runs
    torch = None
if torch is not None:
    from train.test_fidelity import export_training, one_torch_thread  # noqa: F401  (a fixture)

BATCH, C, H, W = 16, 6, 7, 9  # odd spatial sizes: vector remainders in every row


def _model(nodes, inits: dict[str, np.ndarray], opset: int, shape=(BATCH, C, H, W)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "norm_affine", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _affine(rng, shape) -> dict[str, np.ndarray]:
    return {"norm.weight": rng.uniform(0.5, 1.5, shape), "norm.bias": rng.uniform(-0.5, 0.5, shape)}


CASES = {
    # name: (op, attributes, scale/bias shape, opset)
    "layer_norm_last_axis": ("LayerNormalization", {"axis": -1}, (W,), 17),
    # over (C, H, W) with a per-channel scale and shift broadcast to the row: they train in their own shape
    "layer_norm_channel_axis": ("LayerNormalization", {"axis": 1}, (C, 1, 1), 17),
    "instance_norm": ("InstanceNormalization", {}, (C,), 13),
    "group_norm": ("GroupNormalization", {"num_groups": 3}, (C,), 21),
    "group_norm_per_group": ("GroupNormalization", {"num_groups": 3}, (3,), 18),  # opset 18's per-group form
}


@pytest.mark.parametrize("case", list(CASES))
def test_scale_and_shift_gradients_match_finite_differences(case):
    op, attrs, shape, opset = CASES[case]
    rng = np.random.default_rng(19)
    node = helper.make_node(op, ["x", "norm.weight", "norm.bias"], ["y"], epsilon=1e-5, **attrs)
    model = _model([node], _affine(rng, shape), opset)
    x = (rng.standard_normal((BATCH, C, H, W)) * 2 + 1).astype(np.float32)
    targets = rng.standard_normal((BATCH, C, H, W)).astype(np.float32)
    result = convc.gradcheck(model, x, targets, loss="mse", samples=6)
    assert set(result.checked) == {"norm.weight", "norm.bias"}, result  # the initializers, by name
    assert result.ok, str(result)


@pytest.mark.slow
def test_affine_parameters_train_and_the_constants_do_not():
    """One model with every form: InstanceNorm whose scale and shift are Constant nodes (PyTorch's
    affine=False) -> LayerNorm over the last axis -> InstanceNorm (affine) -> GroupNorm -> layer scale -> * 0.5
    (in an order where no normalization undoes the affine map of the one before, so each has a gradient)."""
    rng = np.random.default_rng(3)
    inits = {"in.weight": rng.uniform(0.5, 1.5, C), "in.bias": rng.uniform(-0.5, 0.5, C),
             "gn.weight": rng.uniform(0.5, 1.5, C), "gn.bias": rng.uniform(-0.5, 0.5, C),
             "ln.weight": rng.uniform(0.5, 1.5, W), "ln.bias": rng.uniform(-0.5, 0.5, W),
             "gamma": np.full((C, 1, 1), 0.1), "half": np.array(0.5)}
    const = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.full(C, v, np.float32)))
             for name, v in (("fixed_scale", 1.0), ("fixed_bias", 0.0))]
    nodes = const + [
        helper.make_node("InstanceNormalization", ["x", "fixed_scale", "fixed_bias"], ["a"]),
        helper.make_node("LayerNormalization", ["a", "ln.weight", "ln.bias"], ["b"], axis=-1),
        helper.make_node("InstanceNormalization", ["b", "in.weight", "in.bias"], ["c"]),
        helper.make_node("GroupNormalization", ["c", "gn.weight", "gn.bias"], ["d"], num_groups=2),
        helper.make_node("Mul", ["d", "gamma"], ["e"]),
        helper.make_node("Mul", ["e", "half"], ["y"]),
    ]
    model = _model(nodes, inits, 21)
    trainer = convc.Trainer(model, input_shape=(BATCH, C, H, W), loss="mse",
                            optimizer=convc.optim.SGD(0.5, momentum=0.9), l2=0.1, threads=1)
    expected = {"in.weight": "norm", "in.bias": "bias", "gn.weight": "norm", "gn.bias": "bias",
                "ln.weight": "norm", "ln.bias": "bias", "gamma": "norm"}
    assert sorted(trainer.parameters) == sorted(expected)  # no all-ones scale, Constant node or 0.5
    assert {p: trainer.plan.roles[p] for p in trainer.parameters} == expected  # none is a weight: l2= skips them
    start = trainer.state_dict()
    for name in expected:
        assert start[name].shape == inits[name].shape, name  # the initializers' own shapes
    x = (rng.standard_normal((BATCH, C, H, W)) * 2 + 1).astype(np.float32)
    trainer.step(x, rng.standard_normal((BATCH, C, H, W)).astype(np.float32))
    after = trainer.state_dict()
    for name in expected:
        assert not np.allclose(after[name], start[name], rtol=0, atol=1e-6), f"{name} did not train"
    # the trained values drop into the model's own initializers: the ONNX reference of that model is the
    # Trainer's inference
    trained = onnx.ModelProto()
    trained.CopyFrom(model)
    for init in trained.graph.initializer:
        if init.name in expected:
            init.CopyFrom(numpy_helper.from_array(after[init.name], init.name))
    want = ReferenceEvaluator(trained).run(None, {"x": x})[0]
    np.testing.assert_allclose(trainer.predict(x), want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


# --- against PyTorch -----------------------------------------------------------------------------
STEPS, CLASSES, HW = 10, 10, 15


def _torch_nets():
    nn = torch.nn

    class ConvNeXtBlock(nn.Module):
        """depthwise 7x7 -> LayerNorm (channels last) -> Linear -> GELU -> Linear -> layer scale, residual."""

        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 0.5))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    class Head(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, CLASSES)

        def forward(self, x):
            return self.fc(self.norm(x.mean((2, 3))))

    def convnext():
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2), ConvNeXtBlock(16), Head(16))

    def gn_net():
        # each normalization feeds a ReLU and a conv, so none undoes the affine map of the one before
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, bias=False), nn.GroupNorm(4, 16), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, 2, bias=False), nn.GroupNorm(8, 16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))

    return {"convnext": convnext, "group_norm": gn_net}


@pytest.mark.slow
@pytest.mark.parametrize("net_name", ["convnext", "group_norm"])
def test_norm_nets_train_like_pytorch(net_name, one_torch_thread):
    torch.manual_seed(0)
    net = _torch_nets()[net_name]().train()
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.InstanceNorm2d)
    norm_params = [f"{m}.{p}" for m, module in net.named_modules() if isinstance(module, norms)
                   for p in ("weight", "bias")] + [n for n, _ in net.named_parameters() if n.endswith("gamma")]
    params = dict(net.named_parameters())
    with torch.no_grad():  # norm weights away from 1 and 0, so that a parameter left untrained shows
        for name in norm_params:
            params[name].uniform_(0.5, 1.5) if name.endswith(("weight", "gamma")) else params[name].uniform_(-0.2, 0.2)
    rng = np.random.default_rng(19)
    batches = [((rng.standard_normal((BATCH, 3, HW, HW)) * 1.5).astype(np.float32),
                rng.integers(0, CLASSES, BATCH)) for _ in range(3)]
    proto = export_training(net, batches[0][0])
    # a weight PyTorch unsqueezes (GroupNorm's) trains under the name of the Unsqueeze the importer folded
    alias = {n.input[0]: n.output[0] for n in proto.graph.node if n.op_type == "Unsqueeze"}
    alias |= {n.input[0]: n.output[0] for n in proto.graph.node if n.op_type == "Transpose"}  # Linear weights
    trainer = convc.Trainer(proto, input_shape=(BATCH, 3, HW, HW), optimizer=convc.optim.SGD(0.05, momentum=0.9),
                            threads=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    start = trainer.state_dict()
    assert len(norm_params) == (5 if net_name == "convnext" else 6) and all(alias.get(n, n) in trainer.parameters for n in norm_params), \
        (norm_params, trainer.parameters)
    torch_losses, convc_losses = [], []
    for step in range(STEPS):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
        convc_losses.append(trainer.step(x, y))
    np.testing.assert_allclose(convc_losses, torch_losses, rtol=2e-3, atol=1e-5)
    assert torch_losses[-1] < torch_losses[0]
    mine = trainer.state_dict()
    for name in norm_params:
        want = params[name].detach().numpy()
        key = alias.get(name, name)
        got, before = mine[key].reshape(want.shape), start[key].reshape(want.shape)
        moved = float(np.linalg.norm(want - before))
        err = float(np.linalg.norm(got - want))
        assert moved > 1e-4, f"{name} hardly moved in PyTorch ({moved:.3g}): the comparison shows nothing"
        assert err <= 0.02 * moved, f"{net_name}: {name} differs by {err:.3g} (L2; training moved it {moved:.3g})"
