"""The architectures the differential harness compiles, written with convc.nn so that one
definition serves inference and training at any batch, size and width.

Each builder takes ``width`` (channels of the first stage: odd widths leave register-tile and
vector remainders) and returns a module whose input is (batch, 3, H, W) (the TCN: (batch, 3, T)).
"""
from __future__ import annotations

from convc import nn


class BasicBlock(nn.Module):
    """ResNet's conv-BN-ReLU-conv-BN plus the shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.short = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.short_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        h = nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return nn.relu(h + (self.short_bn(self.short(x)) if self.project else x))


class ResNet(nn.Module):
    """A CIFAR ResNet: a 3x3 stem, stages of BasicBlocks (stride 2 between stages), global
    average pooling and a classifier."""

    def __init__(self, width: int = 8, layout: tuple[int, ...] = (2, 1), classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, n in enumerate(layout):
            cout = width * 2 ** stage
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.ModuleList(blocks)
        self.pool = nn.GlobalAvgPool()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = nn.relu(self.bn1(self.conv1(x)))
        for block in self.layers:
            x = block(x)
        return self.fc(nn.flatten(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2's expand (1x1) - depthwise 3x3 - project (1x1) block, residual when it fits."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.expand, self.bn0 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.dw, self.bn1 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.project, self.bn2 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = nn.relu(self.bn0(self.expand(x)))
        h = nn.relu(self.bn1(self.dw(h)))
        h = self.bn2(self.project(h))
        return x + h if self.residual else h


class MobileNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1), InvertedResidual(width, 2 * width, 2),
                                    InvertedResidual(2 * width, 2 * width, 1))
        self.pool = nn.GlobalAvgPool()
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = nn.relu(self.bn(self.stem(x)))
        return self.fc(nn.flatten(self.pool(self.blocks(x))))


class DenseLayer(nn.Module):
    """DenseNet's pre-activation BN-ReLU-conv3x3 whose output is concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return nn.cat([x, self.conv(nn.relu(self.bn(x)))], dim=1)


class DenseNet(nn.Module):
    def __init__(self, width: int = 8, growth: int = 5, layers: int = 3, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.dense = nn.Sequential(*[DenseLayer(width + i * growth, growth) for i in range(layers)])
        c = width + layers * growth
        self.bn, self.transition = nn.BatchNorm2d(c), nn.Conv2d(c, width, 1, bias=False)
        self.pool, self.gap = nn.AvgPool2d(2), nn.GlobalAvgPool()
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.dense(self.stem(x))
        x = self.pool(self.transition(nn.relu(self.bn(x))))
        return self.fc(nn.flatten(self.gap(x)))


class UNet(nn.Module):
    """Two levels: conv blocks, max pooling down, a transposed conv up, the skip concatenated."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.down2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.fuse = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        skip = self.down1(x)
        x = self.up(self.down2(self.pool(skip)))
        return self.head(self.fuse(nn.cat([skip, x], dim=1)))


class TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, dilation=dilation, padding="causal")
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, dilation=dilation, padding="causal")
        self.short = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv2(nn.relu(self.bn1(self.conv1(x))))
        return nn.relu(h + (self.short(x) if self.short is not None else x))


class TCN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(TemporalBlock(3, width, 1), TemporalBlock(width, width, 2),
                                    TemporalBlock(width, width, 4))
        self.head = nn.Conv1d(width, classes, 1)

    def forward(self, x):
        return self.head(self.blocks(x))


NETS = {"resnet": ResNet, "mobilenet": MobileNet, "densenet": DenseNet, "unet": UNet, "tcn": TCN}


def build(name: str, width: int, seed: int = 0) -> nn.Module:
    nn.manual_seed(seed)
    return NETS[name](width=width)


def input_shape(name: str, batch: int, size: int) -> tuple[int, ...]:
    return (batch, 3, size) if name == "tcn" else (batch, 3, size, size)
