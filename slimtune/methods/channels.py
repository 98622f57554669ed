"""Channel pruning: each channel group keeps the fraction ``1 - policy.prune[group]`` of
its channels, removed for real by torch-pruning (:mod:`slimtune.compress`)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.compress import remove_channels
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.methods.base import CompressionMethod, names
from slimtune.policy import Policy


class ChannelPruning(CompressionMethod):
    name = "channels"
    policy_keys = ("prune",)
    stage = "structure"

    def check(self, table: LayerTable, policy: Policy) -> None:
        unknown = set(policy.prune) - {g.name for g in table.groups}
        if unknown:
            raise PolicyError(f"policy prunes unknown channel groups: {names(unknown)}")

    def restructure(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                    round_to: int = 1, example_input: torch.Tensor | None = None) -> nn.Module:
        return remove_channels(model, table, policy, round_to=round_to,
                               example_input=example_input)
