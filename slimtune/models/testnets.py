"""Two tiny nets (a few thousand parameters) that keep tests fast.

They cover the two channel-coupling patterns the pruner must handle: a residual add
(``tiny_resnet``, with one identity and one stride-2 projection shortcut) and a
channel concatenation (``tiny_concat``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimtune.models.resnet import BasicBlock, init_weights


class TinyResNet(nn.Module):
    """Stem conv (8 ch), an identity block, a stride-2 projection block (16 ch), head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.avgpool(x).flatten(1))


class TinyConcat(nn.Module):
    """A 3x3 and a 1x1 branch concatenated along channels, then a conv and a head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.branch3 = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.branch1 = nn.Sequential(
            nn.Conv2d(in_channels, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.conv = nn.Sequential(
            nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([self.branch3(x), self.branch1(x)], dim=1)
        x = self.conv(x)
        return self.fc(self.avgpool(x).flatten(1))


def tiny_resnet(num_classes: int = 10, in_channels: int = 1) -> TinyResNet:
    """About 5K parameters; residual add plus projection shortcut."""
    return TinyResNet(num_classes, in_channels)


def tiny_concat(num_classes: int = 10, in_channels: int = 1) -> TinyConcat:
    """About 2.6K parameters; a torch.cat of two branches."""
    return TinyConcat(num_classes, in_channels)
