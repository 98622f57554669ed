"""The architecture zoo through the whole pipeline: table -> 50% policy -> ONNX -> ORT.

For every zoo model: the policy really removes MACs, the pruned model exports to ONNX
and ONNX Runtime gives the same logits as torch (fp32) and close ones (int8 QDQ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimtune.compress import PolicyError, count_macs_params
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.layers import build_layer_table
from slimtune.measurement.shapes import ChannelMap
from slimtune.methods.apply import apply_policy, prune_structure
from slimtune.models.zoo import ZOO, HeadAttention
from slimtune.policy import Policy

SHAPE = (1, 28, 28)


def half_policy(table, bits: int = 32) -> Policy:
    return Policy(prune={g.name: 0.5 for g in table.groups},
                  bits={li.name: bits for li in table.layers if bits != 32},
                  model_signature=table.signature())


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_half_policy_exports_and_matches_ort(name: str, batch: torch.Tensor,
                                                 tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    table = build_layer_table(model, SHAPE)
    assert table.groups, f"{name}: nothing prunable"
    policy = half_policy(table, bits=8)
    pruned = apply_policy(model, table, policy).eval()
    macs, params = count_macs_params(pruned, SHAPE)
    assert macs < 0.75 * table.macs and params < table.params

    with torch.no_grad():
        ref = pruned(batch).numpy()
    fp32 = export_onnx(pruned, SHAPE, tmp_path / "m.onnx")
    out = onnx_predict(onnx_session(fp32, threads=1), batch)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

    int8 = quantize_onnx(fp32, tmp_path / "q.onnx", int8_layers=policy.quantized_layers,
                         calibration=torch.randn(64, *SHAPE))
    q = onnx_predict(onnx_session(int8, threads=1), batch)
    scale = np.abs(ref).max()
    assert np.abs(q - ref).max() <= 0.25 * scale, f"{name}: int8 logits far from fp32"
    assert (q.argmax(1) == ref.argmax(1)).mean() >= 0.6


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_channel_map_predicts_pruned_shapes(name: str) -> None:
    model = ZOO[name]().eval()
    table = build_layer_table(model, SHAPE)
    policy = half_policy(table)
    _assert_channel_map_matches(model, table, policy)


def test_vit_prunes_whole_heads() -> None:
    model = ZOO["vit_tiny"]().eval()
    table = build_layer_table(model, SHAPE)
    heads = [g for g in table.groups if g.attention]
    assert [g.attention for g in heads] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(g.head_dim == 8 and g.channels == 32 for g in heads)
    # 0.3 of 4 heads rounds to whole heads: 3 kept, never a fraction of one
    pruned = prune_structure(model, table, Policy(prune={heads[0].name: 0.3, heads[1].name: 0.5}))
    attn = [m for m in pruned.modules() if isinstance(m, HeadAttention)]
    assert [a.num_heads for a in attn] == [3, 2]
    assert [a.q.out_features for a in attn] == [24, 16]
    assert [a.proj.in_features for a in attn] == [24, 16]
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_vit_removes_the_weakest_head() -> None:
    model = ZOO["vit_tiny"]().eval()
    attn = model.blocks[0].attn
    with torch.no_grad():  # head 2 of block 0 made tiny in q, k, v and proj
        for lin in (attn.q, attn.k, attn.v):
            lin.weight[16:24] *= 1e-3
            lin.bias[16:24] = 0
        attn.proj.weight[:, 16:24] *= 1e-3
    table = build_layer_table(model, SHAPE)
    pruned = prune_structure(model, table, Policy(prune={"blocks.0.attn.q": 0.25}))
    kept = pruned.blocks[0].attn.q.weight
    expected = torch.cat([attn.q.weight[:16], attn.q.weight[24:]])
    assert torch.equal(kept, expected)


def test_channel_shuffle_groups_are_not_offered() -> None:
    """torch-pruning cannot follow indices through ShuffleNet's split+concat+shuffle: those
    channels stay; the groups inside a branch remain prunable; naming one is a clear error."""
    model = ZOO["shufflenet_tiny"]().eval()
    table = build_layer_table(model, SHAPE)
    assert "stem.0" not in {g.name for g in table.groups}
    assert table.layer("stem.0").group is None
    assert {"units.0.branch.0.0", "last.0"} <= {g.name for g in table.groups}
    with pytest.raises(PolicyError, match="unknown channel groups: stem.0"):
        apply_policy(model, table, Policy(prune={"stem.0": 0.5}))


def test_multihead_attention_module_prunes_embedding() -> None:
    """torch's own nn.MultiheadAttention: the embedding dim is pruned, heads stay whole."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(1, 32, 7, 7)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return self.head(x.mean(1))

    model = Net().eval()
    table = build_layer_table(model, SHAPE)
    pruned = apply_policy(model, table, Policy(prune={"patch": 0.5}))
    assert (pruned.attn.embed_dim, pruned.attn.num_heads) == (16, 4)
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_unrunnable_pruning_names_the_group() -> None:
    """A reshape into a fixed head count that the table does not know as heads: pruning
    half the channels leaves a model that cannot run, reported with the group's name."""

    class FixedHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.mix = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            y = self.stem(x).reshape(b, 4, 2, 28, 28).mean(2).repeat_interleave(2, 1)
            return self.fc(self.mix(y).mean(dim=(2, 3)))

    model = FixedHeads().eval()
    table = build_layer_table(model, SHAPE)
    if "stem" not in {g.name for g in table.groups}:
        pytest.skip("torch-pruning did not offer the group")
    with pytest.raises(PolicyError, match="'stem'"):
        apply_policy(model, table, Policy(prune={"stem": 0.5}))


def test_channel_map_of_an_odd_head_count_follows_whole_head_pruning() -> None:
    from slimtune.models.zoo import ViTTiny

    model = ViTTiny(dim=48, num_heads=3).eval()  # 16 channels a head: half is not whole
    table = build_layer_table(model, SHAPE)
    policy = Policy(prune={g.name: 0.25 for g in table.groups if g.attention},
                    model_signature=table.signature())
    _assert_channel_map_matches(model, table, policy)


def _assert_channel_map_matches(model: nn.Module, table, policy: Policy) -> None:
    """ChannelMap's predicted layer shapes are those of the really pruned model."""
    shapes = ChannelMap.probe(model, table).shapes(policy)
    pruned = dict(prune_structure(model, table, policy).named_modules())
    for layer, s in shapes.items():
        m = pruned[layer]
        got = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) \
            else (m.in_features, m.out_features)
        assert got == (s.in_channels, s.out_channels), layer
