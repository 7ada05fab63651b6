"""model.summary: per-layer output shapes, parameters and MACs (op_def(kind).macs: the
multiply-accumulates of Conv, Gemm and MatMul, batch included), totals at the bottom."""
from __future__ import annotations

from convc import nn


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool1(nn.relu(self.conv1(x)))
        x = self.pool2(nn.relu(self.conv2(x)))
        x = nn.flatten(x)
        return self.fc3(nn.relu(self.fc2(nn.relu(self.fc1(x)))))


def test_lenet5_rows():
    s = LeNet5().summarize((1, 1, 32, 32))
    rows = [(r.name, r.type, r.output_shape, r.params, r.macs) for r in s.layers]
    assert rows == [
        # 6 outputs of 28x28, each 1*5*5 taps: 6*28*28*25 = 117,600; params 6*25 + 6 = 156
        ("conv1", "Conv2d", (1, 6, 28, 28), 156, 117_600),
        ("relu", "relu", (1, 6, 28, 28), 0, 0),
        ("pool1", "MaxPool2d", (1, 6, 14, 14), 0, 0),
        # 16*10*10 outputs, each 6*5*5 = 150 taps: 1,600*150 = 240,000; params 16*150 + 16 = 2,416
        ("conv2", "Conv2d", (1, 16, 10, 10), 2_416, 240_000),
        ("relu_1", "relu", (1, 16, 10, 10), 0, 0),
        ("pool2", "MaxPool2d", (1, 16, 5, 5), 0, 0),
        ("flatten", "flatten", (1, 400), 0, 0),
        # Gemm M*N*K: 1*120*400 = 48,000; params 400*120 + 120 = 48,120
        ("fc1", "Linear", (1, 120), 48_120, 48_000),
        ("relu_2", "relu", (1, 120), 0, 0),
        ("fc2", "Linear", (1, 84), 10_164, 10_080),   # 120*84 = 10,080; 10,080 + 84
        ("relu_3", "relu", (1, 84), 0, 0),
        ("fc3", "Linear", (1, 10), 850, 840),         # 84*10 = 840; 840 + 10
    ]
    # 117,600 + 240,000 + 48,000 + 10,080 + 840
    assert s.total_macs == 416_520
    # 156 + 2,416 + 48,120 + 10,164 + 850
    assert s.total_params == 61_706 and s.buffer_elements == 0


def test_lenet5_table(capsys):
    model = LeNet5()
    text = model.summary((1, 1, 32, 32))
    lines = text.splitlines()
    assert lines[0] == "Model: LeNet5    input (1, 1, 32, 32)"
    assert lines[2].split() == ["Layer", "(type)", "Output", "shape", "Params", "MACs"]
    assert lines[4].split() == ["conv1", "(Conv2d)", "(1,", "6,", "28,", "28)", "156", "117,600"]
    assert lines[-3:] == ["Total params: 61,706", "Non-trainable buffers: 0", "Total MACs: 416,520"]
    model.print_summary((1, 1, 32, 32))
    assert capsys.readouterr().out == text + "\n"


def test_macs_scale_with_the_batch():
    assert LeNet5().summarize((4, 1, 32, 32)).total_macs == 4 * 416_520  # every op's MACs count the batch


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return nn.relu(x + self.bn2(self.conv2(nn.relu(self.bn1(self.conv1(x))))))


def test_residual_block_with_batch_norm():
    s = Residual().summarize((1, 4, 6, 6))
    by_name = {r.name: r for r in s.layers}
    # 4*6*6 outputs, 4*3*3 = 36 taps each: 144*36 = 5,184; padded taps count
    assert by_name["conv1"].macs == by_name["conv2"].macs == 5_184 and by_name["conv1"].params == 4 * 4 * 9
    assert by_name["bn1"].params == 8 and by_name["bn1"].macs == 0  # scale and shift; running stats are buffers
    assert [r.name for r in s.layers] == ["conv1", "bn1", "relu", "conv2", "bn2", "add", "relu_1"]
    assert s.total_macs == 2 * 5_184
    assert s.total_params == 2 * 144 + 2 * 8 and s.buffer_elements == 2 * 8  # (mean, var) x 4 channels x 2


def test_grouped_and_one_dimensional_convolutions():
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1))
    d, p = depthwise.summarize((1, 8, 8, 8)).layers
    assert d.macs == 8 * 8 * 8 * 9     # each output sees 8/8 = 1 channel x 3x3: 4,608
    assert p.macs == 16 * 8 * 8 * 8    # pointwise: 16*64 outputs x 8 channels: 8,192
    (c,) = nn.Sequential(nn.Conv1d(2, 4, 3, dilation=2, padding="causal")).summarize((1, 2, 10)).layers
    assert c.output_shape == (1, 4, 10) and c.macs == 4 * 10 * 2 * 3  # 240
