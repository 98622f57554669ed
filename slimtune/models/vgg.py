"""A small VGG-style net for 28x28 grey images: a plain chain with no skips.

It is the easy case for pruning (every conv's output channels are free to cut), so
it is a useful contrast to the ResNets, whose residual adds couple channels.
"""

from __future__ import annotations

from torch import Tensor, nn

from slimtune.models.resnet import init_weights

# Conv output widths; "M" is a 2x2 max-pool. 28x28 -> 14x14 -> 7x7 before the global pool.
VGG_SMALL_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128)


class VGG(nn.Module):
    """3x3 conv-BN-ReLU layers per ``cfg``, global average pool, one linear layer."""

    def __init__(
        self, cfg: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg_small(num_classes: int = 10, in_channels: int = 1) -> VGG:
    """Six convs (32,32,M,64,64,M,128,128), about 0.29M parameters."""
    return VGG(VGG_SMALL_CFG, num_classes, in_channels)
