"""Two nets a pruner meets in the wild and the zoo's tiny ones do not cover.

| builder | pattern |
|---|---|
| ``resnext_g8`` | ResNeXt bottlenecks with 8-group 3x3 convs (4 or 6 channels a conv group) |
| ``shufflenet_v2`` | ShuffleNetV2: stride-2 units with two branches, stride-1 units that split the
  channels (``torch.split`` / ``chunk``), concatenation, a reshape-transpose-reshape shuffle |

torch-pruning cannot build its dependency graph for ``shufflenet_v2`` at all (a
``ZeroDivisionError`` mapping indices through the shuffle's reshape), and grouped convs
only prune when every conv group loses the same positions: what ``slimtune.probe`` and the
space are for. Importable as user models (``model: {import: "slimtune.models.unseen:..."}``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimtune.models.resnet import init_weights
from slimtune.models.zoo import channel_shuffle


def _cbr(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
         relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """``body``: 1x1 reduce, grouped 3x3, 1x1 expand; plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, groups: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c_in, width, 1), _cbr(width, width, 3, stride, groups),
                                  _cbr(width, c_out, 1, relu=False))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else \
            _cbr(c_in, c_out, 1, stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNeXtG8(nn.Module):
    """Stem (16), three bottlenecks (widths 32, 48, 64; the last stride 2), head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(in_channels, 16, 3), Bottleneck(16, 32, 32, 1),
                                      Bottleneck(32, 48, 32, 1), Bottleneck(32, 64, 64, 2))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class DownUnit(nn.Module):
    """ShuffleNetV2 stride-2 unit: both branches see the input, concat, shuffle."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        half = c_out // 2
        self.left = nn.Sequential(_cbr(c_in, c_in, 3, 2, groups=c_in, relu=False),
                                  _cbr(c_in, half, 1))
        self.right = nn.Sequential(_cbr(c_in, half, 1),
                                   _cbr(half, half, 3, 2, groups=half, relu=False),
                                   _cbr(half, half, 1))

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class SplitUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit: split the channels in two (``torch.split`` or
    ``chunk``), transform one half, concat, shuffle."""

    def __init__(self, channels: int, use_chunk: bool) -> None:
        super().__init__()
        half = channels // 2
        self.use_chunk = use_chunk
        self.branch = nn.Sequential(_cbr(half, half, 1),
                                    _cbr(half, half, 3, groups=half, relu=False),
                                    _cbr(half, half, 1))

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        left, right = x.chunk(2, dim=1) if self.use_chunk else torch.split(x, half, dim=1)
        return channel_shuffle(torch.cat([left, self.branch(right)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """Stem (24), a stage (down 96, split, chunk), a 1x1 conv (128), head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 24, 3)
        self.stage = nn.Sequential(DownUnit(24, 96), SplitUnit(96, use_chunk=False),
                                   SplitUnit(96, use_chunk=True))
        self.last = _cbr(96, 128, 1)
        self.fc = nn.Linear(128, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.last(self.stage(self.stem(x))).mean(dim=(2, 3)))


def resnext_g8(num_classes: int = 10, in_channels: int = 1) -> ResNeXtG8:
    return ResNeXtG8(num_classes, in_channels)


def shufflenet_v2(num_classes: int = 10, in_channels: int = 1) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)
