"""The masked supernet is the extracted sub-network: the contract the supernet evaluator's
scores rest on, on every architecture family of the zoo (and the built-in ResNet,
MobileNetV2 and the tiny test nets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn

from slimtune.compress import PolicyError, removed_channels
from slimtune.data import Split
from slimtune.envs.proxy import recalibrate_bn
from slimtune.evaluators.supernet import MaskedSupernet, channel_order
from slimtune.layers import build_layer_table
from slimtune.methods.apply import prune_structure
from slimtune.models import BUILTIN_ARCHS
from slimtune.models.zoo import ZOO
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace

SHAPE = (1, 28, 28)
FAMILIES = {**ZOO, **{k: BUILTIN_ARCHS[k] for k in ("tiny_resnet", "tiny_concat",
                                                    "mobilenetv2_small")}}
RATIOS = (0.0, 0.25, 0.5, 0.75)


def round_to_of(name: str) -> int:
    return 4 if name == "resnext_tiny" else 1  # grouped convs of 4: keep multiples of 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split() -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(64, *SHAPE, generator=g), torch.randint(0, 10, (64,), generator=g))


def random_policy(space: SearchSpace, rng: random.Random) -> Policy:
    return space.policy_from_params({f"prune.{g}": rng.choice(rs)
                                     for g, rs in space.ratios.items()})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_masked_supernet_equals_extracted_subnetwork(name: str, split: Split) -> None:
    torch.manual_seed(0)
    model = FAMILIES[name]().eval()
    round_to = round_to_of(name)
    table = build_layer_table(model, SHAPE, round_to=round_to)
    space = SearchSpace.from_table(table, RATIOS, (32,), round_to=round_to)
    supernet = MaskedSupernet(model, table, channel_order(model, table), round_to=round_to)
    with torch.no_grad():
        full = supernet.eval()(split.x[:16])
    rng = random.Random(name)
    for _ in range(2):
        policy = random_policy(space, rng)
        supernet.set_policy(policy)
        recalibrate_bn(supernet, split, batches=2, batch_size=32)
        sub = supernet.extract()
        n_params = sum(p.numel() for p in sub.parameters())
        assert n_params < sum(p.numel() for p in model.parameters()) or not policy.prune
        with torch.no_grad():
            masked, extracted = supernet(split.x[:16]), sub(split.x[:16])
        torch.testing.assert_close(masked, extracted, rtol=0, atol=1e-4)
        # the same holds in train mode: recalibrating the extracted net on the same
        # batches gives it the same BN statistics
        recalibrate_bn(sub, split, batches=2, batch_size=32)
        with torch.no_grad():
            torch.testing.assert_close(sub(split.x[:16]), extracted, rtol=0, atol=1e-4)
        if policy.prune:
            assert (masked - full).abs().max() > 1e-3  # the masks did something
    supernet.largest()
    with torch.no_grad():  # the full network is untouched by hooks without masks
        with supernet.detached() as plain:
            torch.testing.assert_close(supernet(split.x[:16]), plain(split.x[:16]))


def test_every_ratio_keeps_a_prefix_of_one_ranking() -> None:
    model = BUILTIN_ARCHS["tiny_resnet"]().eval()
    table = build_layer_table(model, SHAPE)
    order = channel_order(model, table)
    group = table.groups[-1]
    kept_before: set[int] = set(range(group.channels))
    for ratio in (0.25, 0.5, 0.75):
        removed = removed_channels(model, table, Policy(prune={group.name: ratio}),
                                   keep_order=order)[group.name]
        kept = set(range(group.channels)) - set(removed)
        assert kept == set(order[group.name][:len(kept)])
        assert kept <= kept_before  # nested: a smaller net is inside every larger one
        kept_before = kept


def test_keep_order_defaults_to_magnitude_and_is_checked() -> None:
    model = BUILTIN_ARCHS["tiny_resnet"]().eval()
    table = build_layer_table(model, SHAPE)
    policy = Policy(prune={g.name: 0.5 for g in table.groups})
    order = channel_order(model, table)  # on the unpruned model: the same as magnitude
    assert removed_channels(model, table, policy) == \
        removed_channels(model, table, policy, keep_order=order)
    with pytest.raises(PolicyError, match="must rank each of its"):
        prune_structure(model, table, policy, keep_order={table.groups[0].name: [0, 1]})


def test_head_groups_are_ranked_in_whole_heads() -> None:
    model = ZOO["vit_tiny"]().eval()
    table = build_layer_table(model, SHAPE)
    order = channel_order(model, table)
    for group in table.groups:
        if group.attention:
            ranked = order[group.name]
            heads = [ranked[i:i + group.head_dim] for i in range(0, len(ranked), group.head_dim)]
            assert all(list(h) == list(range(h[0], h[0] + group.head_dim)) for h in heads)


def test_grouped_conv_keeps_the_same_positions_of_every_conv_group() -> None:
    model = ZOO["resnext_tiny"]().eval()
    table = build_layer_table(model, SHAPE, round_to=4)
    supernet = MaskedSupernet(model, table, channel_order(model, table), round_to=4)
    name = "layer1.reduce.0"  # feeds the 4-group 3x3 conv
    kept = supernet.order[name][:8]  # 4 channels a conv group: 2 positions of each
    assert sorted(Counter(c % 4 for c in kept).values()) == [4, 4]
    assert sorted(Counter(c // 4 for c in kept).values()) == [2, 2, 2, 2]
    with pytest.raises(PolicyError, match="multiple of 4"):
        supernet.set({name: 6})


def test_unsupported_module_in_a_group_is_a_clear_error() -> None:
    class GroupNormNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8)
            self.mix = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.mix(self.norm(self.conv(x))).mean(dim=(2, 3)))

    model = GroupNormNet().eval()
    table = build_layer_table(model, SHAPE)
    if "conv" not in {g.name for g in table.groups}:
        pytest.skip("torch-pruning did not offer the group")
    with pytest.raises(PolicyError, match="GroupNorm"):
        MaskedSupernet(model, table, channel_order(model, table))
