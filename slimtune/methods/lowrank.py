"""Low-rank factorisation: each ``policy.rank`` layer becomes two truncated-SVD factors
keeping that fraction of its rank (:mod:`slimtune.lowrank`)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.lowrank import factorizable, factorize
from slimtune.methods.base import CompressionMethod, names
from slimtune.policy import Policy


class LowRank(CompressionMethod):
    name = "lowrank"
    policy_keys = ("rank",)
    stage = "structure"

    def check(self, table: LayerTable, policy: Policy) -> None:
        super().check(table, policy)
        grouped = [li for li in table.layers if li.name in policy.rank and not factorizable(li)]
        if grouped:
            raise PolicyError(f"layer {grouped[0].name!r} is a grouped/depthwise conv "
                              f"(groups={grouped[0].groups}): it cannot be factorised")
        both = set(policy.rank) & (set(policy.sparsity) | set(policy.clusters))
        if both:
            raise PolicyError(f"layers {names(both)}: low-rank factorisation is not combined "
                              "with sparsity or clusters on the same layer (bits are)")

    def restructure(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                    round_to: int = 1, example_input: torch.Tensor | None = None) -> nn.Module:
        if policy.rank:
            factorize(model, table, dict(policy.rank))
        return model
