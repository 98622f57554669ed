"""ChannelMap: the shape of every layer under a policy, without pruning the model.

Pruning a channel group removes output channels from its member layers and input
channels from the layers that consume them (one each after a conv, ``H*W`` each after a
flatten into a linear layer, a slice of a concatenation). These effects are linear in
the number of channels a group loses, so they are probed once per group by really
pruning the model (torch-pruning), and then any policy's shapes are a sum. The latency
predictor and the env's budget wall call this thousands of times per episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from slimtune.compress import PolicyError, group_kept
from slimtune.layers import LayerTable
from slimtune.methods.apply import prune_structure
from slimtune.policy import Policy


@dataclass(frozen=True)
class LayerShape:
    """A conv/linear layer's channel counts after pruning."""

    in_channels: int
    out_channels: int
    groups: int


@dataclass(frozen=True)
class ChannelMap:
    """Per layer and group: channels lost per channel the group's root loses."""

    table: LayerTable
    round_to: int
    in_loss: Mapping[str, Mapping[str, float]]  # layer -> group -> in-channels lost per channel
    out_loss: Mapping[str, Mapping[str, float]]

    @classmethod
    def probe(cls, model: nn.Module, table: LayerTable, *, round_to: int = 1) -> ChannelMap:
        """Prune each group alone by about half and record how every layer shrank (a group
        that cannot be pruned gets no entry: the probe leaves it out of every space)."""
        base = {li.name: (li.in_channels, li.out_channels) for li in table.layers}
        in_loss: dict[str, dict[str, float]] = {li.name: {} for li in table.layers}
        out_loss: dict[str, dict[str, float]] = {li.name: {} for li in table.layers}
        for group in table.groups:
            removed = group.channels - group_kept(group, 0.5)  # what prune_structure removes
            if removed == 0:
                continue
            try:
                pruned = prune_structure(model, table, Policy(prune={group.name: 0.5}))
            except PolicyError:  # a group preflight's probe leaves out: never pruned
                continue
            modules = dict(pruned.named_modules())
            for name, (c_in, c_out) in base.items():
                m = modules[name]
                now_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
                now_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                if now_in != c_in:
                    in_loss[name][group.name] = (c_in - now_in) / removed
                if now_out != c_out:
                    out_loss[name][group.name] = (c_out - now_out) / removed
        return cls(table=table, round_to=round_to, in_loss=in_loss, out_loss=out_loss)

    def removed(self, policy: Policy) -> dict[str, int]:
        """Channels each group's root loses under ``policy`` (rounded as pruning rounds).

        ValueError for a policy that factorises layers (``rank``): the map (and the
        latency predictor and env built on it) models channel pruning only, and would
        otherwise silently give the unfactorised shapes.
        """
        if policy.rank:
            raise ValueError("ChannelMap models channel pruning only, not low-rank "
                             f"factorisation (rank of {', '.join(policy.rank)})")
        out = {}
        for g in self.table.groups:
            ratio = policy.ratio(g.name)
            if ratio > 0:
                out[g.name] = g.channels - group_kept(g, ratio, self.round_to)
        return out

    def shapes(self, policy: Policy) -> dict[str, LayerShape]:
        """Every layer's channel counts after ``policy``'s pruning."""
        removed = self.removed(policy)
        shapes = {}
        for li in self.table.layers:
            c_in = li.in_channels - sum(k * removed.get(g, 0)
                                        for g, k in self.in_loss[li.name].items())
            c_out = li.out_channels - sum(k * removed.get(g, 0)
                                          for g, k in self.out_loss[li.name].items())
            c_in, c_out = int(round(c_in)), int(round(c_out))
            groups = c_out if li.kind == "depthwise" else li.groups
            shapes[li.name] = LayerShape(c_in, c_out, groups)
        return shapes

    def macs(self, policy: Policy) -> int:
        """Sum of the conv/linear layers' MACs under ``policy`` (``LayerInfo.macs`` units)."""
        total = 0
        shapes = self.shapes(policy)
        for li in self.table.layers:
            s = shapes[li.name]
            scale = (s.in_channels / s.groups) * s.out_channels / (
                (li.in_channels / li.groups) * li.out_channels)
            total += int(round(li.macs * scale))
        return total
