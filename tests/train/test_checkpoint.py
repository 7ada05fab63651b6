"""Trainer checkpoints: ``save`` / ``load_state`` / ``Trainer.load`` resume bit-exactly (weights,
BN statistics, optimizer moments, step counter, Dropout's stream, learning rate and schedule), and a
damaged or mismatched file raises CheckpointError naming what differs, changing nothing."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import convc
from convc.optim import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, SequentialLR
from convc.train import CheckpointError
from train import nets

BATCH, SHAPE = 16, (16, 3, 32, 32)


def cifar_bn_dropout(seed: int = 0, width: int = 8):
    """conv-BN-ReLU-maxpool twice (3x32x32 -> width*2 x 8x8), dropout, linear: CIFAR-sized."""
    n = nets.Net(seed)
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv("input", "conv1", 3, width), "bn1", width)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv(x, "conv2", width, 2 * width), "bn2", 2 * width)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("Flatten", [x], axis=1)
    x = n.dropout(x, 0.25)
    x = n.gemm(x, "fc", 2 * width * 64, 10)
    return n.model(["N", 3, 32, 32], x, ["N", 10], "cifar_bn_dropout")


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(3)
    return [(rng.standard_normal(SHAPE).astype(np.float32), rng.integers(0, 10, BATCH)) for _ in range(6)]


def warmup_cosine(t: convc.Trainer) -> SequentialLR:
    return SequentialLR(t, [LinearLR(t, 0.1, total_iters=2), CosineAnnealingLR(t, T_max=6)], milestones=[2])


def run(t: convc.Trainer, sched, batches) -> list[float]:
    losses = []
    for x, y in batches:
        losses.append(t.step(x, y))
        if isinstance(sched, ReduceLROnPlateau):
            sched.step(losses[-1])
        elif sched is not None:
            sched.step()
    return losses


def assert_same_state(a: convc.Trainer, b: convc.Trainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for n in sa:
        assert np.array_equal(sa[n], sb[n]), n
    assert a.lr == b.lr and a._lr_value == b._lr_value


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, schedule", [
    (lambda: convc.optim.Adam(3e-3, weight_decay=1e-4), warmup_cosine),
    (lambda: convc.optim.SGD(0.05, momentum=0.9, nesterov=True),
     lambda t: ReduceLROnPlateau(t, patience=0, factor=0.5)),
], ids=["adam_warmup_cosine", "sgd_nesterov_plateau"])
def test_resume_is_bit_exact(tmp_path, batches, optimizer, schedule):
    model = cifar_bn_dropout()
    t = convc.Trainer(model, input_shape=SHAPE, optimizer=optimizer(), seed=7, l2=1e-4)
    sched = schedule(t)
    run(t, sched, batches[:3])
    path = tmp_path / "ckpt"  # no .npz suffix: saved under exactly this name
    t.save(path)
    assert path.exists()
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"][()]))
    assert header["optimizer"] == type(t.optimizer).__name__ and header["seed"] == 7
    assert header["scheduler"]["type"] == type(sched).__name__
    expected = run(t, sched, batches[3:])

    resumed = convc.Trainer.load(path, model)  # everything from the file, the schedule rebuilt
    assert resumed.steps_done == 3 and type(resumed.scheduler) is type(sched)
    assert run(resumed, resumed.scheduler, batches[3:]) == expected
    assert_same_state(t, resumed)

    # the same through load_state on a Trainer built as the first was, its schedule attached first
    again = convc.Trainer(model, input_shape=SHAPE, optimizer=optimizer(), seed=7, l2=1e-4)
    s2 = schedule(again)
    again.load_state(path)
    assert run(again, s2, batches[3:]) == expected
    assert_same_state(t, again)
    # the running statistics and the optimizer state were part of it
    names = again.state_dict()
    assert any(n.endswith("running_var") for n in names) and any(n.startswith("fc.weight.") for n in names)


# --- errors: small nets, 8x8 ----------------------------------------------------------------------------
def small(optimizer=None, **kw) -> convc.Trainer:
    model = kw.pop("model", nets.digits_cnn(c1=4, c2=8))
    return convc.Trainer(model, input_shape=(8, 1, 8, 8), optimizer=optimizer or convc.optim.SGD(0.1, momentum=0.9),
                         **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = small()
    t.step(rng.standard_normal((8, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 8))
    path = tmp_path_factory.mktemp("ckpt") / "t.npz"
    t.save(path)
    return t, path


def assert_unchanged(t: convc.Trainer, before: dict) -> None:
    for n, v in t.state_dict().items():
        assert np.array_equal(v, before[n]), n


def test_other_settings_are_named(saved):
    t, path = saved
    other = small(convc.optim.SGD(0.1, momentum=0.5), seed=3)
    before = other.state_dict()
    with pytest.raises(CheckpointError, match=r"optimizer_settings: .*'momentum': 0.9.* in the checkpoint, "
                                              r".*'momentum': 0.5.* here; seed: 0 in the checkpoint, 3 here"):
        other.load_state(path)
    assert_unchanged(other, before)
    with pytest.raises(CheckpointError, match="optimizer: 'SGD' in the checkpoint, 'Adam' here"):
        small(convc.optim.Adam()).load_state(path)


def test_other_model_is_named(saved):
    t, path = saved
    other = small(model=nets.digits_cnn(c1=4, c2=16))
    before = other.state_dict()
    with pytest.raises(CheckpointError, match=r"does not fit .*'conv2.weight' is float32 \(8, 4, 3, 3\) in the "
                                              r"checkpoint, float32 \(16, 4, 3, 3\) here"):
        other.load_state(path)
    assert_unchanged(other, before)
    with pytest.raises(CheckpointError, match="does not fit this Trainer's model 'digits_cnn': "
                                              "unexpected 'conv1.bias', 'conv2.bias'"):
        small(model=nets.digits_cnn(c1=4, c2=8, conv_bias=False)).load_state(path)


def test_damaged_files(saved, tmp_path):
    t, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:len(data) // 2])
    flipped = tmp_path / "flipped.npz"
    with zipfile.ZipFile(path) as z:  # the last byte of the first array's data
        info = z.getinfo("a0.npy")
    i = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size - 1
    flipped.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    text = tmp_path / "text.npz"
    text.write_text("not a checkpoint")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    objects = tmp_path / "objects.npz"
    np.savez(objects, header=np.array([{"format": "convc-trainer-checkpoint"}], dtype=object))
    before = t.state_dict()
    for bad, why in [(cut, "damaged or not a convc checkpoint"), (flipped, "damaged"),
                     (text, "damaged or not a convc checkpoint"), (plain, "damaged or not a convc checkpoint"),
                     (objects, "damaged or not a convc checkpoint"), (tmp_path / "none.npz", "no such checkpoint")]:
        with pytest.raises(CheckpointError, match=why):
            t.load_state(bad)
    assert_unchanged(t, before)
    # a header from the future
    with zipfile.ZipFile(path) as z:
        header = json.loads(str(np.load(path, allow_pickle=False)["header"][()]))
        names = z.namelist()
    header["version"] = 99
    future = tmp_path / "future.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {n[:-4]: z[n[:-4]] for n in names}
    arrays["header"] = np.array(json.dumps(header))
    with open(future, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="format version 99"):
        t.load_state(future)


def test_schedule_must_be_attached(saved, tmp_path):
    t, _ = saved
    s = CosineAnnealingLR(t, T_max=10)
    s.step()
    path = tmp_path / "sched.npz"
    t.save(path)
    t.scheduler = None
    fresh = small()
    with pytest.raises(CheckpointError, match="state of a CosineAnnealingLR schedule; build the same schedule"):
        fresh.load_state(path)
    from convc.optim import StepLR
    StepLR(fresh, 3)
    with pytest.raises(CheckpointError, match="CosineAnnealingLR cannot load into a StepLR"):
        fresh.load_state(path)
    resumed = convc.Trainer.load(path, nets.digits_cnn(c1=4, c2=8))
    assert resumed.lr == t.lr and resumed.scheduler.last_epoch == 1 and resumed.initial_lr == pytest.approx(0.1)
