"""``convc compile --train --loss [OUTPUT=]NAME[:KEY=VALUE,...]`` (convc/cli/loss_spec.py): every
option of convc.Loss from the command line, per output, and a library built with them trains as
convc.Trainer with the same convc.Loss."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import convc
from convc.cli.compile import parse_losses
from convc.losses import LOSS_NAMES, Loss

OUTPUTS = ["classes", "values"]


@pytest.mark.parametrize("specs, weights, loss, loss_weights", [
    (["cross_entropy"], None, "cross_entropy", None),
    (["cross_entropy:label_smoothing=0.1,ignore_index=-1"], None,
     Loss("cross_entropy", label_smoothing=0.1, ignore_index=-1), None),
    (["nll:class_weight=1/2/0.5, reduction=mean"], None, Loss("nll", weight=(1.0, 2.0, 0.5)), None),
    (["cross_entropy:soft_targets=true"], None, Loss("cross_entropy", soft_targets=True), None),
    (["huber:delta=0.5"], None, Loss("huber", delta=0.5), None),
    (["smooth_l1:delta=2"], None, Loss("smooth_l1", delta=2.0), None),
    (["bce_with_logits", "l1"], [1.0, 0.25], ["bce_with_logits", "l1"], [1.0, 0.25]),
    # named outputs, in any order: the losses come back in the model's output order
    (["values=mse:weight=0.5", "classes=cross_entropy:label_smoothing=0.2"], None,
     [Loss("cross_entropy", label_smoothing=0.2), "mse"], [1.0, 0.5]),
    (["values=mse", "classes=nll"], [0.5, 2.0], ["nll", "mse"], [2.0, 0.5]),
])
def test_parses_every_option(specs, weights, loss, loss_weights):
    assert parse_losses(specs, OUTPUTS, weights) == (loss, loss_weights)


def test_every_loss_name_parses():
    for name in LOSS_NAMES:
        assert parse_losses([name], ["y"]) == (name, None)


def test_output_names_are_the_models_even_with_colons_and_equals():
    """An output named ``out:0`` (TensorFlow's spelling) or ``a=b``: the longest model output that
    prefixes the spec is the one it names."""
    outputs = ["out:0", "a=b", "a"]
    got = parse_losses(["a=b=mse", "out:0=cross_entropy:ignore_index=-1", "a=l1:weight=2"], outputs)
    assert got == ([Loss("cross_entropy", ignore_index=-1), "mse", "l1"], [1.0, 1.0, 2.0])


@pytest.mark.parametrize("specs, weights, message", [
    (["focal"], None, "unknown loss 'focal'; convc has cross_entropy, mse"),
    (["cross_entropy:gamma=2"], None, "unknown option 'gamma'; the options are label_smoothing, class_weight, "
                                       "ignore_index, soft_targets, delta, reduction, weight"),
    (["mse:label_smoothing=0.1"], None, "loss 'mse' has no option label_smoothing"),
    (["mse:ignore_index=0"], None, "loss 'mse' has no option ignore_index"),
    (["l1:soft_targets=true"], None, "loss 'l1' has no option soft_targets"),
    (["cross_entropy:delta=0.5"], None, "loss 'cross_entropy' has no option delta"),
    (["mse:class_weight=1/2"], None, "loss 'mse' has no option class_weight"),
    (["cross_entropy:reduction=sum"], None, "reduction='sum' is not available: convc's losses are the mean"),
    (["cross_entropy:label_smoothing=abc"], None, "label_smoothing='abc' must be a number in"),
    (["cross_entropy:label_smoothing=1.5"], None, r"label_smoothing=1.5 must be in \[0, 1\]"),
    (["cross_entropy:ignore_index=1.5"], None, "ignore_index='1.5' must be an integer"),
    (["cross_entropy:soft_targets=maybe"], None, "soft_targets='maybe' must be true or false"),
    (["cross_entropy:class_weight=1/x"], None, "class_weight='x' must be one number per class"),
    (["cross_entropy:class_weight=1/-2"], None, "class weights must be finite and non-negative"),
    (["huber:delta=0"], None, "delta=0.0 must be a positive number"),
    (["cross_entropy:label_smoothing"], None, "option 'label_smoothing' needs a value"),
    (["cross_entropy:ignore_index=1,ignore_index=2"], None, "option 'ignore_index' is given twice"),
    (["mse:weight=nan"], None, "weight='nan' must be a finite, non-negative number"),
    (["mse:weight=-1"], None, "weight='-1' must be a finite, non-negative number"),
    (["mse:weight=1/2"], None, "per-class weights are class_weight="),
    (["cross_entropy", "mse:weight=0.5"], [1.0, 0.5], "weight=W and --loss-weight both"),
    (["cross_entropy", "mse"], [0.5], "1 --loss-weight for 2 --loss"),
    (["logits=cross_entropy", "values=mse"], None, "the model has no output 'logits'; its outputs are "
                                                   r"\['classes', 'values'\]"),
    (["classes=cross_entropy", "mse"], None, "name the output of every loss"),
    (["classes=cross_entropy", "classes=mse"], None, r"outputs \['classes'\] have several losses"),
    (["classes=cross_entropy"], None, r"outputs \['values'\] have no loss"),
])
def test_refuses_with_the_option_named(specs, weights, message):
    with pytest.raises(convc.InputError, match=message):
        parse_losses(specs, OUTPUTS, weights)


def test_cli_refuses_a_bad_option_before_building(tmp_path, capsys):
    from train.test_library_multi_io import two_in_two_out

    from convc.cli import main
    model = tmp_path / "m.onnx"
    onnx.save(two_in_two_out(), str(model))
    assert main(["compile", str(model), "-o", str(tmp_path / "t.so"), "--train",
                 "--loss", "classes=cross_entropy:smoothing=0.1", "--loss", "values=mse"]) != 0
    assert "unknown option 'smoothing'; the options are label_smoothing" in capsys.readouterr().err
    assert not (tmp_path / "t.so").exists()


@pytest.mark.slow  # a training library's build: about 6 s
def test_library_built_with_options_trains_like_the_trainer(tmp_path, capsys):
    """Per-output --loss with label smoothing, class weights and ignore_index on the classes and
    Huber's delta and a weight on the values: the library's losses (full and partial batches, some
    labels ignored) and weights are those of the Trainer with the same convc.Loss list."""
    from train.test_library_multi_io import BATCH, HW, SIDE, batch, two_in_two_out

    from convc.cli import main
    model = tmp_path / "m.onnx"
    onnx.save(two_in_two_out(), str(model))
    out = tmp_path / "train.so"
    assert main(["compile", str(model), "-o", str(out), "--train", "--batch", str(BATCH), "--lr", "0.01", "-q",
                 "--loss", "values=huber:delta=0.5,weight=0.5",
                 "--loss", "classes=cross_entropy:label_smoothing=0.1,ignore_index=-100,class_weight=1/2/0.5/1/3"]) == 0
    printed = capsys.readouterr().out
    assert "cross_entropy loss (label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.0, 3.0], ignore_index=-100)" in printed
    assert "huber loss (delta=0.5) x 0.5" in printed
    lib = convc.load(out)
    losses = [Loss("cross_entropy", label_smoothing=0.1, ignore_index=-100, weight=(1, 2, 0.5, 1, 3)),
              Loss("huber", delta=0.5)]
    t = convc.Trainer(str(model), input_shape={"image": (BATCH, 3, HW, HW), "side": (BATCH, SIDE)}, loss=losses,
                      loss_weights=[1.0, 0.5], optimizer=convc.optim.Adam(0.01), seed=0)
    for seed, (n, ignored) in enumerate([(BATCH, 0), (BATCH, 3), (7, 2)]):
        x, y = batch(seed, n, ignored)
        np.testing.assert_allclose(lib.step(x, y), t.step(x, y), rtol=1e-5, err_msg=f"step {seed}")
    mine, theirs = lib.state_dict(), t.state_dict()
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-7, err_msg=name)
