"""SearchSpace: the per-layer choices a searcher picks from.

One categorical dimension per prunable channel group (``prune.<group>``: its prune
ratio) and one per quantizable layer (``bits.<layer>``: its weight bit-width), plus,
when the spec's ``space.sparsity``/``space.clusters`` list choices, Deep Compression's
``sparsity.<layer>`` and ``clusters.<layer>`` (0 = off). The space translates between
flat parameter dicts (what Optuna samples) and Policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from optuna.distributions import BaseDistribution, CategoricalDistribution

from slimtune.compress import group_kept
from slimtune.layers import LayerTable
from slimtune.policy import Policy

PRUNE = "prune."
BITS = "bits."
SPARSITY = "sparsity."
CLUSTERS = "clusters."


@dataclass(frozen=True)
class SearchSpace:
    """Choices per group and per layer, for one LayerTable.

    ``ratios[group]`` lists the prune ratios allowed for that group: one ratio per
    distinct number of channels kept after rounding to ``round_to``, so a searcher never
    spends trials on choices that build the same model. ``bits[layer]`` lists the
    bit-widths allowed for that layer.
    """

    table: LayerTable
    ratios: Mapping[str, tuple[float, ...]]
    bits: Mapping[str, tuple[int, ...]]
    # Deep Compression dimensions (``sparsity.<layer>``, ``clusters.<layer>``; 0 = off),
    # only for layers listed here: empty by default, so a space without them is unchanged
    sparsity: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    clusters: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_table(
        cls, table: LayerTable, prune_ratios: tuple[float, ...], bits: tuple[int, ...],
        *, round_to: int = 1, sparsity: tuple[float, ...] = (), clusters: tuple[int, ...] = (),
    ) -> SearchSpace:
        ratios = {}
        for group in table.groups:
            kept = {r: group_kept(group, r, round_to) for r in prune_ratios}  # heads: whole
            # ratios that round to the same channel count are one choice, not several
            allowed = tuple(r for r in prune_ratios
                            if r == min(q for q in prune_ratios if kept[q] == kept[r]))
            ratios[group.name] = allowed or (0.0,)
        names = [layer.name for layer in table.layers]
        sparsity_choices = tuple(sorted({0.0, *sparsity})) if sparsity else ()
        cluster_choices = tuple(sorted({0, *clusters})) if clusters else ()
        return cls(table=table, ratios=ratios, bits={n: tuple(bits) for n in names},
                   sparsity={n: sparsity_choices for n in names if sparsity_choices},
                   clusters={n: cluster_choices for n in names if cluster_choices})

    @property
    def dimensions(self) -> int:
        return len(self.ratios) + len(self.bits) + len(self.sparsity) + len(self.clusters)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions, one categorical per dimension."""
        dists: dict[str, BaseDistribution] = {}
        for group, choices in self.ratios.items():
            dists[PRUNE + group] = CategoricalDistribution(choices)
        for layer, choices in self.bits.items():
            dists[BITS + layer] = CategoricalDistribution(choices)
        for layer, choices in self.sparsity.items():
            dists[SPARSITY + layer] = CategoricalDistribution(choices)
        for layer, choices in self.clusters.items():
            dists[CLUSTERS + layer] = CategoricalDistribution(choices)
        return dists

    def policy_from_params(self, params: Mapping[str, float | int]) -> Policy:
        prune = {k.removeprefix(PRUNE): float(v) for k, v in params.items()
                 if k.startswith(PRUNE) and float(v) > 0}
        bits = {k.removeprefix(BITS): int(v) for k, v in params.items()
                if k.startswith(BITS) and int(v) != 32}
        sparsity = {k.removeprefix(SPARSITY): float(v) for k, v in params.items()
                    if k.startswith(SPARSITY) and float(v) > 0}
        clusters = {k.removeprefix(CLUSTERS): int(v) for k, v in params.items()
                    if k.startswith(CLUSTERS) and int(v) > 0}
        return Policy(prune=prune, bits=bits, model_signature=self.table.signature(),
                      sparsity=sparsity, clusters=clusters)

    def params_from_policy(self, policy: Policy) -> dict[str, float | int]:
        params: dict[str, float | int] = {}
        for group in self.ratios:
            params[PRUNE + group] = policy.ratio(group)
        for layer in self.bits:
            params[BITS + layer] = policy.bits_of(layer)
        for layer in self.sparsity:
            params[SPARSITY + layer] = policy.sparsity.get(layer, 0.0)
        for layer in self.clusters:
            params[CLUSTERS + layer] = policy.clusters.get(layer, 0)
        return params

    def contains(self, policy: Policy) -> bool:
        params = self.params_from_policy(policy)
        dists = self.distributions()
        return all(params[k] in d.choices for k, d in dists.items())  # type: ignore[attr-defined]

    def uniform(self, ratio: float, bits: int) -> Policy:
        """The same ratio in every group (capped by what each allows) and the same bits."""
        prune = {g: max((r for r in rs if r <= ratio), default=0.0)
                 for g, rs in self.ratios.items()}
        return self.policy_from_params(
            {**{PRUNE + g: r for g, r in prune.items()},
             **{BITS + layer: bits for layer in self.bits}})

    def most_aggressive(self) -> list[Policy]:
        """The smallest model the space allows, once per bit-width (the fastest is one)."""
        all_bits = sorted({b for choices in self.bits.values() for b in choices})
        return [self.policy_from_params(
            {**{PRUNE + g: max(rs) for g, rs in self.ratios.items()},
             **{BITS + layer: b for layer in self.bits}}) for b in all_bits]
