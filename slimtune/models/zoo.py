"""An architecture zoo: one small net per channel-coupling pattern a pruner must survive.

Each builder takes ``num_classes``/``in_channels`` like the built-ins and runs on 28x28
(and 16x16) inputs. They are importable as user models
(``model: {import: "slimtune.models.zoo:densenet_tiny"}``) and are what
``tests/test_zoo.py`` and ``benchmarks/zoo.py`` run the whole pipeline on.

| builder | pattern |
|---|---|
| ``densenet_tiny`` | DenseNet concatenation (every layer sees all earlier feature maps) |
| ``mobilenet_se`` | depthwise-separable blocks with squeeze-and-excitation (a channel gate) |
| ``resnext_tiny`` | grouped 3x3 convs (cardinality 4) in residual bottlenecks |
| ``shufflenet_tiny`` | ShuffleNetV2 channel split, concat and channel shuffle |
| ``vit_tiny`` | patch embedding + 2 pre-norm transformer blocks with 4-head attention |
| ``mlp`` | a plain multi-layer perceptron |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from slimtune.models.resnet import init_weights


def _cbr(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


# --- DenseNet ---------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` channels, concatenated onto its input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class DenseNetTiny(nn.Module):
    """Stem (16), dense block of 3 layers (growth 8), 1x1 transition + pool, dense block, head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        c = 16
        block1 = []
        for _ in range(3):
            block1.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*block1)
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                        nn.Conv2d(c, 24, 1, bias=False), nn.AvgPool2d(2))
        c = 24
        block2 = []
        for _ in range(2):
            block2.append(DenseLayer(c, growth))
            c += growth
        self.block2 = nn.Sequential(*block2)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.transition(self.block1(self.stem(x))))
        x = torch.relu(self.norm(x))
        return self.fc(x.mean(dim=(2, 3)))


# --- MobileNet with squeeze-and-excitation ---------------------------------------------

class SqueezeExcite(nn.Module):
    """Channel gate: global pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class SeparableSE(nn.Module):
    """Depthwise 3x3 - BN - ReLU - SE - pointwise 1x1 - BN - ReLU (MobileNetV1/V3 style)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.dw = _cbr(c_in, c_in, 3, stride, groups=c_in)
        self.se = SqueezeExcite(c_in)
        self.pw = _cbr(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.se(self.dw(x)))


class MobileNetSE(nn.Module):
    """Stem (16), four separable SE blocks (32, 32, 64, 64; two stride 2), head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16, 3)
        self.blocks = nn.Sequential(SeparableSE(16, 32, 2), SeparableSE(32, 32, 1),
                                    SeparableSE(32, 64, 2), SeparableSE(64, 64, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


# --- ResNeXt (grouped convolutions) ------------------------------------------------------

class ResNeXtBlock(nn.Module):
    """1x1 reduce, grouped 3x3 (``cardinality`` groups), 1x1 expand, residual add."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int,
                 cardinality: int = 4) -> None:
        super().__init__()
        self.reduce = _cbr(c_in, width, 1)
        self.grouped = _cbr(width, width, 3, stride, groups=cardinality)
        self.expand = nn.Sequential(nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXtTiny(nn.Module):
    """Stem (16), a stride-1 and a stride-2 bottleneck with 4-group 3x3 convs, head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16, 3)
        self.layer1 = ResNeXtBlock(16, 16, 32, 1)
        self.layer2 = ResNeXtBlock(32, 32, 64, 2)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean(dim=(2, 3)))


# --- ShuffleNetV2 (channel split and shuffle) --------------------------------------------

def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal parts (ShuffleNet's shuffle)."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit, stride 1: split channels in half, transform one half, concat,
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            _cbr(half, half, 1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            _cbr(half, half, 1))

    def forward(self, x: Tensor) -> Tensor:
        left, right = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([left, self.branch(right)], dim=1), 2)


class ShuffleNetTiny(nn.Module):
    """Stem (24, stride 2), two shuffle units, a 1x1 conv (64), head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 24, 3, 2)
        self.units = nn.Sequential(ShuffleUnit(24), ShuffleUnit(24))
        self.last = _cbr(24, 64, 1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.last(self.units(self.stem(x))).mean(dim=(2, 3)))


# --- Vision transformer -------------------------------------------------------------------

class HeadAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections, so heads can be removed.

    ``num_heads`` and ``head_dim`` are plain attributes: slimtune's head pruning
    (``slimtune.compress``) removes whole heads by cutting ``head_dim`` rows per head from
    ``q``/``k``/``v`` and the matching columns of ``proj``, and lowers ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, d).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, h * d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """Patch embedding (7x7 patches: 16 tokens of 32 dims at 28x28), learned position
    embedding, 2 transformer blocks with 4 heads, mean-pooled tokens, head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dim: int = 32,
                 depth: int = 2, num_heads: int = 4, patch: int = 7, image: int = 28) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        if x.shape[1] == self.pos.shape[1]:
            x = x + self.pos
        x = self.blocks(x)
        return self.head(self.norm(x).mean(dim=1))


# --- MLP ----------------------------------------------------------------------------------

class MLP(nn.Module):
    """Flatten, 128, 64, head: ReLU between Linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image: int = 28) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image * image, 128),
                                 nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def densenet_tiny(num_classes: int = 10, in_channels: int = 1) -> DenseNetTiny:
    return DenseNetTiny(num_classes, in_channels)


def mobilenet_se(num_classes: int = 10, in_channels: int = 1) -> MobileNetSE:
    return MobileNetSE(num_classes, in_channels)


def resnext_tiny(num_classes: int = 10, in_channels: int = 1) -> ResNeXtTiny:
    return ResNeXtTiny(num_classes, in_channels)


def shufflenet_tiny(num_classes: int = 10, in_channels: int = 1) -> ShuffleNetTiny:
    return ShuffleNetTiny(num_classes, in_channels)


def vit_tiny(num_classes: int = 10, in_channels: int = 1) -> ViTTiny:
    return ViTTiny(num_classes, in_channels)


def mlp(num_classes: int = 10, in_channels: int = 1) -> MLP:
    return MLP(num_classes, in_channels)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "densenet_tiny": densenet_tiny,
    "mobilenet_se": mobilenet_se,
    "resnext_tiny": resnext_tiny,
    "shufflenet_tiny": shufflenet_tiny,
    "vit_tiny": vit_tiny,
    "mlp": mlp,
}
