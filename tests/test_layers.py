"""LayerTable construction on tiny nets: channel groups, costs, JSON round trip.

The nets here are also used by test_compress.py: every conv is registered directly before
its BatchNorm, which the masked-reference check there relies on.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from slimtune.layers import LayerTable, build_layer_table, count_macs_params

SHAPE = (3, 16, 16)


def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False),
                         nn.BatchNorm2d(o), nn.ReLU())


class Block(nn.Module):
    """ResNet basic block; a strided 1x1 projection when the shape changes."""

    def __init__(self, i: int, o: int, s: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.down = (nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))
                     if s != 1 or i != o else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class CatNet(nn.Module):
    """Two branches concatenated, then a conv over both."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 6)
        self.b = cbr(8, 10, 1)
        self.mix = cbr(16, 12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.expand = cbr(c, h, 1)
        self.dw = cbr(h, h, 3, 1, h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, 3, 2)
        self.block = InvertedResidual(8, 4)
        self.head = cbr(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(self.stem(x))).mean((2, 3)))


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), cbr(8, 16, 3, 2), cbr(16, 16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class ConvHead(nn.Module):
    """No linear layer: the last conv's channels are the output classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = cbr(3, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).mean((2, 3))


NETS = [TinyResNet, CatNet, TinyMobileNet, PlainNet]


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so eval-mode BN matters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def make(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


def groups_of(table: LayerTable) -> dict[str, tuple[str, ...]]:
    return {g.name: g.layers for g in table.groups}


def test_residual_stage_is_one_group() -> None:
    table = build_layer_table(make(TinyResNet), SHAPE)
    assert groups_of(table) == {
        "stem.0": ("stem.0", "layer1.0.conv2", "layer1.1.conv2"),
        "layer1.0.conv1": ("layer1.0.conv1",),
        "layer1.1.conv1": ("layer1.1.conv1",),
        "layer2.0.conv1": ("layer2.0.conv1",),
        "layer2.0.conv2": ("layer2.0.conv2", "layer2.0.down.0"),
    }
    assert [g.name for g in table.groups] == sorted(
        groups_of(table), key=lambda n: table.layer(n).index)
    assert table.layer("layer1.1.conv2").group == "stem.0"
    assert table.layer("fc").group is None and table.layer("fc").kind == "linear"


def test_concat_branches_are_separate_groups() -> None:
    table = build_layer_table(make(CatNet), SHAPE)
    assert groups_of(table) == {"stem.0": ("stem.0",), "a.0": ("a.0",), "b.0": ("b.0",),
                                "mix.0": ("mix.0",)}
    assert table.layer("mix.0").in_channels == 16


def test_depthwise_is_coupled_with_its_expansion() -> None:
    table = build_layer_table(make(TinyMobileNet), SHAPE)
    assert groups_of(table) == {"stem.0": ("stem.0", "block.project.0"),
                                "block.expand.0": ("block.expand.0", "block.dw.0"),
                                "head.0": ("head.0",)}
    dw = table.layer("block.dw.0")
    assert (dw.kind, dw.groups, dw.group) == ("depthwise", 32, "block.expand.0")
    assert table.layer("block.expand.0").kind == "conv"


def test_layer_that_produces_the_output_is_not_prunable() -> None:
    table = build_layer_table(make(ConvHead), SHAPE)
    assert groups_of(table) == {"body.0": ("body.0",)}
    assert table.layer("head").group is None


def test_layer_rows_and_costs() -> None:
    model = make(PlainNet)
    table = build_layer_table(model, SHAPE, round_to=4)
    assert [li.name for li in table.layers] == ["features.0.0", "features.1.0",
                                                "features.2.0", "fc"]
    assert [li.index for li in table.layers] == [0, 1, 2, 3]
    assert [li.depth for li in table.layers] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    conv = table.layer("features.1.0")
    assert (conv.in_channels, conv.out_channels, conv.kernel, conv.stride) == (8, 16, 3, 2)
    assert conv.in_hw == (16, 16) and table.layer("features.2.0").in_hw == (8, 8)
    assert conv.macs == 8 * 8 * 16 * 8 * 3 * 3 and conv.params == 16 * 8 * 9
    fc = table.layer("fc")
    assert (fc.in_hw, fc.macs, fc.params) == ((1, 1), 16 * 3, 16 * 3 + 3)
    assert all(g.min_channels == 4 for g in table.groups)
    # Totals are tp.utils.count_ops_and_params: the weights' MACs plus BN/ReLU/bias ops.
    assert (table.macs, table.params) == count_macs_params(model, SHAPE)
    assert table.params == sum(p.numel() for p in model.parameters())
    assert sum(li.macs for li in table.layers) < table.macs


def test_build_leaves_the_model_as_it_was() -> None:
    model = make(TinyResNet).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_layer_table(model, SHAPE)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_signature_is_stable_and_structural() -> None:
    sigs = {cls: build_layer_table(make(cls), SHAPE).signature() for cls in NETS}
    assert len(set(sigs.values())) == len(NETS)
    torch.manual_seed(1)
    assert build_layer_table(TinyResNet(), SHAPE).signature() == sigs[TinyResNet]
    assert build_layer_table(TinyResNet(), (3, 32, 32)).signature() != sigs[TinyResNet]


@pytest.mark.parametrize("cls", NETS)
def test_json_round_trip(cls: type[nn.Module]) -> None:
    table = build_layer_table(make(cls), SHAPE)
    back = LayerTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back == table and back.signature() == table.signature()
