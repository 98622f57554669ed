"""A small MobileNetV2 (Sandler et al. 2018) for 28x28 images.

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear project, residual add
when stride is 1 and widths match). The stem has stride 1 and the stage table is cut
down so a 28x28 input is pooled three times (28 -> 14 -> 7 -> 4), not five. Depthwise
convs tie their channels to the expand conv before them, which is what makes this
net a harder pruning case than the ResNets.
"""

from __future__ import annotations

from torch import Tensor, nn

from slimtune.models.resnet import init_weights

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
MOBILENETV2_SMALL_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """Conv (same padding), BN, ReLU6: the unit every MobileNetV2 layer is built from."""
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, no activation), optional skip."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += conv_bn_relu6(c_in, hidden, 1)
        layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.use_residual:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual stages per ``cfg``, 1x1 head conv, pool, linear."""

    def __init__(
        self,
        cfg: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SMALL_CFG,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        last_channels: int = 256,
    ) -> None:
        super().__init__()
        stem = make_divisible(16 * width_mult)
        layers: list[nn.Module] = conv_bn_relu6(in_channels, stem, 3, stride=1)
        channels = stem
        for expansion, c, repeats, first_stride in cfg:
            out = make_divisible(c * width_mult)
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                layers.append(InvertedResidual(channels, out, stride, expansion))
                channels = out
        head = make_divisible(last_channels * max(1.0, width_mult))
        layers += conv_bn_relu6(channels, head, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenetv2_small(num_classes: int = 10, in_channels: int = 1) -> MobileNetV2:
    """MobileNetV2 at width 0.75 on the cut-down stage table, about 0.24M parameters."""
    return MobileNetV2(MOBILENETV2_SMALL_CFG, num_classes, in_channels, width_mult=0.75)
