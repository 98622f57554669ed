"""Elastic depth: the residual blocks in ``policy.skip`` are replaced by ``nn.Identity``
(:mod:`slimtune.depth` decides which blocks may go)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.blocks import drop_blocks
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.methods.base import CompressionMethod, names
from slimtune.policy import Policy, under


class Depth(CompressionMethod):
    name = "depth"
    policy_keys = ("skip",)
    stage = "structure"

    def check(self, table: LayerTable, policy: Policy) -> None:
        layers = [li.name for li in table.layers]
        empty = [b for b in policy.skip if not any(under(n, [b]) for n in layers)]
        if empty:
            raise PolicyError(f"policy skips blocks holding no layer: {names(empty)}")

    def restructure(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                    round_to: int = 1, example_input: torch.Tensor | None = None) -> nn.Module:
        return drop_blocks(model, policy.skip)
