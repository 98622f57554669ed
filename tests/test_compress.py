"""apply_policy for real: channels removed, output kept, weights fake-quantized, sizes exact."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from slimtune.compress import (
    PolicyError,
    count_macs_params,
    kept_channels,
    packed_size_bytes,
    removed_channels,
)
from slimtune.layers import LayerTable, build_layer_table
from slimtune.methods.apply import apply_policy, prune_structure
from slimtune.policy import Policy
from tests.test_layers import NETS, SHAPE, CatNet, PlainNet, TinyMobileNet, TinyResNet, make

X = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))


def half_policy(table: LayerTable, ratio: float = 0.5) -> Policy:
    return Policy(prune={g.name: ratio for g in table.groups},
                  model_signature=table.signature())


def saved_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def masked_reference(model: nn.Module, table: LayerTable,
                     removed: dict[str, list[int]]) -> nn.Module:
    """A copy of ``model`` whose removed channels output exactly 0, nothing removed.

    For every layer of a group, the removed rows of its weight (and bias) and of the
    BatchNorm registered right after it are zeroed. Zero gamma and beta make BN output
    exactly 0 whatever its running mean; ReLU keeps 0, a residual add of two zeros is 0,
    so every consumer sees zeros where the pruned model has no channel at all.
    """
    ref = copy.deepcopy(model)
    mods = list(ref.named_modules())
    bn_after = {name: mods[i + 1][1] for i, (name, m) in enumerate(mods[:-1])
                if isinstance(m, nn.Conv2d) and isinstance(mods[i + 1][1], nn.BatchNorm2d)}
    named = dict(mods)
    with torch.no_grad():
        for group, idxs in removed.items():
            for layer in table.group(group).layers:
                for t in (named[layer].weight, named[layer].bias, getattr(
                        bn_after.get(layer), "weight", None), getattr(
                        bn_after.get(layer), "bias", None)):
                    if t is not None:
                        t[idxs] = 0
    return ref


@pytest.mark.parametrize("cls", NETS)
def test_pruned_output_equals_masked_reference(cls: type[nn.Module]) -> None:
    model = make(cls)
    table = build_layer_table(model, SHAPE)
    ratios = [0.5, 0.25, 0.4, 0.6, 0.3]
    policy = Policy(prune={g.name: r for g, r in zip(table.groups, ratios, strict=False)})
    removed = removed_channels(model, table, policy)
    assert set(removed) == set(policy.prune)
    pruned = apply_policy(model, table, policy)
    with torch.no_grad():
        expected = masked_reference(model, table, removed)(X)
        got = pruned(X)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # The removed channels matter: masking changes the original output.
    assert not torch.allclose(expected, model(X), atol=1e-3)


@pytest.mark.parametrize("cls", NETS)
def test_pruning_shrinks_the_model_and_keeps_the_original(cls: type[nn.Module]) -> None:
    model = make(cls)
    before = copy.deepcopy(model.state_dict())
    table = build_layer_table(model, SHAPE)
    pruned = apply_policy(model, table, half_policy(table))

    assert pruned(X).shape == model(X).shape
    macs, params = count_macs_params(pruned, SHAPE)
    assert 0.15 * table.macs < macs < 0.6 * table.macs
    assert 0.15 * table.params < params < 0.65 * table.params
    # The saved file shrinks by the float32 storage removed, up to torch.save's
    # 64-byte alignment of each tensor record.
    removed = sum(v.numel() for v in before.values()) - sum(
        v.numel() for v in pruned.state_dict().values())
    shrink = saved_bytes(model) - saved_bytes(pruned)
    assert removed > 0 and shrink >= 4 * removed - 64 * len(before)
    named = dict(pruned.named_modules())
    for g in table.groups:
        kept = kept_channels(g.channels, 0.5)
        for layer in g.layers:
            assert named[layer].weight.shape[0] == kept
    assert named["fc"].out_features == table.layer("fc").out_channels
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model(X).shape == pruned(X).shape


@pytest.mark.parametrize("cls", NETS)
def test_identity_policy_is_exact(cls: type[nn.Module]) -> None:
    model = make(cls)
    table = build_layer_table(model, SHAPE)
    policy = Policy(prune={g.name: 0.0 for g in table.groups},
                    bits={li.name: 32 for li in table.layers})
    out = apply_policy(model, table, policy)
    assert out is not model
    assert torch.equal(out(X), model(X))


def test_round_to_and_minimum_channels() -> None:
    assert kept_channels(16, 0.5) == 8
    assert kept_channels(16, 0.3, round_to=4) == 12
    assert kept_channels(16, 0.95, min_channels=4, round_to=4) == 4
    assert kept_channels(3, 0.9) == 1
    model = make(TinyResNet)
    table = build_layer_table(model, SHAPE, round_to=4)
    pruned = prune_structure(model.train(), table, half_policy(table, 0.9), round_to=4)
    assert pruned.layer2[0].conv2.out_channels == 4 and pruned.stem[0].out_channels == 4
    assert all(m.training for m in pruned.modules()) and model.training


def test_pruned_weights_load_into_a_rebuilt_structure() -> None:
    model = make(CatNet)
    table = build_layer_table(model, SHAPE)
    policy = half_policy(table, 0.3)
    pruned = apply_policy(model, table, policy)
    rebuilt = prune_structure(CatNet().eval(), table, policy)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt(X), pruned(X))


def test_fake_quant_grid_and_8bit_default() -> None:
    model = make(TinyMobileNet)
    table = build_layer_table(model, SHAPE)
    policy = Policy(prune={"block.expand.0": 0.5},
                    bits={"block.expand.0": 4, "block.dw.0": 2, "head.0": 8})
    out = apply_policy(model, table, policy)
    plain = prune_structure(model, table, policy)
    for name, bits in (("block.expand.0", 4), ("block.dw.0", 2)):
        w = out.get_submodule(name).weight
        for row in w.reshape(w.shape[0], -1):
            assert len(torch.unique(row)) <= 2 ** bits
        assert not torch.equal(w, plain.get_submodule(name).weight)
    assert torch.equal(out.head[0].weight, plain.head[0].weight)
    assert torch.equal(out.stem[0].weight, plain.stem[0].weight)
    w8 = apply_policy(model, table, policy, fake_quant_8bit=True).head[0].weight
    assert not torch.equal(w8, plain.head[0].weight)
    assert all(len(torch.unique(row)) <= 256 for row in w8.reshape(w8.shape[0], -1))
    assert torch.allclose(w8, plain.head[0].weight, atol=w8.abs().max().item() / 127)


def test_packed_size_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 2)).eval()
    table = build_layer_table(model, (2, 5, 5))
    # conv 54 + 3, BN 3 + 3 + 3 + 3 + 1 (num_batches_tracked), linear 6 + 2 elements.
    assert packed_size_bytes(model, table, Policy()) == 4 * 78
    # conv at 4 bits: ceil(54 * 4 / 8) = 27 bytes + 3 scales; linear at 2 bits: 2 + 2 scales.
    policy = Policy(bits={"0": 4, "4": 2})
    expected = (27 + 4 * 3) + 4 * 3 + 4 * 13 + (math.ceil(6 * 2 / 8) + 4 * 2) + 4 * 2
    assert packed_size_bytes(model, table, policy) == expected == 121


def test_packed_size_of_a_pruned_model_reads_its_tensors() -> None:
    model = make(PlainNet)
    table = build_layer_table(model, SHAPE)
    policy = Policy(prune={"features.2.0": 0.5}, bits={"features.2.0": 8})
    pruned = apply_policy(model, table, policy)
    full = packed_size_bytes(pruned, table, Policy(prune=policy.prune))
    w = pruned.features[2][0].weight
    assert w.shape[0] == 8
    assert full - packed_size_bytes(pruned, table, policy) == 4 * w.numel() - (w.numel() + 32)


def test_policy_errors() -> None:
    model = make(TinyResNet)
    table = build_layer_table(model, SHAPE)
    cases = [
        (Policy(model_signature="0123456789ab"), "made for model 0123456789ab"),
        (Policy(prune={"layer1.0.conv2": 0.5}), "unknown channel groups: layer1.0.conv2"),
        (Policy(bits={"nope": 4}), "unknown layers: nope"),
    ]
    for policy, message in cases:
        for call in (apply_policy, removed_channels, packed_size_bytes):
            with pytest.raises(PolicyError, match=message):
                call(model, table, policy)
    pruned = apply_policy(model, table, half_policy(table))
    with pytest.raises(PolicyError, match="already pruned"):
        apply_policy(pruned, table, half_policy(table))
    with pytest.raises(PolicyError, match="another model"):
        apply_policy(make(PlainNet), table, Policy())


def test_policy_json_round_trip() -> None:
    table = build_layer_table(make(TinyResNet), SHAPE)
    policy = Policy(prune={"stem.0": 0.25}, bits={"fc": 8, "layer1.0.conv1": 4},
                    model_signature=table.signature())
    assert Policy.from_json(policy.to_json()) == policy
    apply_policy(make(TinyResNet), table, Policy.from_json(policy.to_json()))
