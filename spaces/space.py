"""SearchSpace: the per-layer choices a searcher picks from.

One categorical dimension per prunable channel group (``prune.<group>``: its prune
ratio) and one per quantizable layer (``bits.<layer>``: its weight bit-width), plus,
when the spec's ``space.sparsity``/``space.clusters`` list choices, Deep Compression's
``sparsity.<layer>`` and ``clusters.<layer>`` (0 = off), and when ``space.distill``,
``space.temperature`` or ``space.alpha`` list choices, the fine-tune recipe's
``recipe.<name>`` (carried by ``Policy.recipe``). The space translates between flat
parameter dicts (what Optuna samples) and Policies.

When ``space.rank`` lists fractions, low-rank factorisation adds ``rank.<layer>`` (the
fraction of the layer's rank kept; 1.0 = not factorised) for the layers where it can
save MACs. When ``space.skip_blocks`` is on, elastic depth adds ``skip.<block>`` (1 = the
block is dropped) for each droppable block (:mod:`slimtune.depth`).

What the space leaves out keeps one choice only, "leave it as it is" (ratio 0, 32 bits),
and is listed in ``left_out`` with why: the layers ``space.exclude`` names (no choice of
any kind), and the channel groups preflight's probe (:mod:`slimtune.probe`) saw fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from slimtune.compress import group_kept
from slimtune.depth import droppable_blocks
from slimtune.errors import SpecError
from slimtune.layers import LayerTable
from slimtune.lowrank import worthwhile_fractions
from slimtune.policy import FLOAT_BITS, Policy, under
from slimtune.spec import SpaceSpec

PRUNE = "prune."
BITS = "bits."
SPARSITY = "sparsity."
CLUSTERS = "clusters."
RANK = "rank."
RECIPE = "recipe."
SKIP = "skip."
#: the one bit-width dimension of a ``bits_per: model`` space
ALL_BITS = "bits:all"  # ":" never occurs in a module name; MLflow takes it in a key


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
    # low-rank dimensions (``rank.<layer>``; 1.0 = not factorised), only for the layers
    # listed here: see ``_rank_choices``. Empty by default.
    rank: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # fine-tune hyperparameters searched (``recipe.distill``, ...); empty: none, a trial
    # uses the spec's ``finetune`` values
    recipe: Mapping[str, tuple[float | bool, ...]] = field(default_factory=dict)
    # droppable blocks (``skip.<block>``: 0 keeps it, 1 drops it); empty: depth is fixed
    skip: tuple[str, ...] = ()
    # one bit-width for the whole model (``bits:all``) instead of one per layer: ``bits``
    # still lists what each layer allows (a layer left out keeps fp32)
    model_bits: bool = False
    # dimensions left with the one choice "as it is" (``prune.<group>``: 0, ``bits.<layer>``:
    # 32) -> why: ``space.exclude`` and the groups preflight's probe saw fail
    left_out: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(
        cls, table: LayerTable, prune_ratios: tuple[float, ...], bits: tuple[int, ...],
        *, round_to: int = 1, sparsity: tuple[float, ...] = (), clusters: tuple[int, ...] = (),
        rank: tuple[float, ...] = (),
        recipe: Mapping[str, tuple[float | bool, ...]] | None = None,
        blocks: tuple[str, ...] = (), model_bits: bool = False,
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
                   clusters={n: cluster_choices for n in names if cluster_choices},
                   rank=_rank_choices(table, rank),
                   recipe={k: tuple(v) for k, v in (recipe or {}).items() if v},
                   skip=tuple(blocks), model_bits=model_bits)

    @classmethod
    def for_spec(cls, spec: SpaceSpec, table: LayerTable,
                 model: nn.Module | None = None) -> SearchSpace:
        """The job's space: the spec's ``space`` section over ``table``; droppable blocks
        are found on ``model`` when ``space.skip_blocks`` is on."""
        blocks = droppable_blocks(model, table) if spec.skip_blocks and model is not None \
            else ()
        space = cls.from_table(table, spec.prune_ratios, spec.bits, round_to=spec.round_to,
                               sparsity=spec.sparsity, clusters=spec.clusters, rank=spec.rank,
                               recipe=spec.recipe, blocks=blocks,
                               model_bits=spec.bits_per == "model")
        return space.excluding(spec.exclude) if spec.exclude else space

    def excluding(self, patterns: Sequence[str]) -> SearchSpace:
        """This space with the layers ``patterns`` (names or fnmatch globs) match left as
        they are: their channel groups not pruned (a group is named after its first
        layer, so a group's name excludes it), no bits, sparsity, clusters or rank choice.
        SpecError (one line) for a pattern that matches no layer."""
        names = [li.name for li in self.table.layers]
        matched: dict[str, str] = {}
        for pattern in patterns:
            hits = [n for n in names if fnmatchcase(n, pattern)]
            if not hits:
                raise SpecError(f"space.exclude: {pattern!r} matches no layer or channel "
                                f"group of the model (its {len(names)} layers run from "
                                f"{names[0]!r} to {names[-1]!r})")
            matched.update((n, pattern) for n in hits if n not in matched)
        groups = {li.group: f"space.exclude {matched[li.name]!r} (layer {li.name})"
                  for li in self.table.layers if li.name in matched and li.group}
        return self.without(groups=groups,
                            layers={n: f"space.exclude {p!r}" for n, p in matched.items()})

    def without(self, *, groups: Mapping[str, str] | None = None,
                layers: Mapping[str, str] | None = None) -> SearchSpace:
        """This space with ``groups`` never pruned and ``layers`` left entirely as they are
        (fp32, no sparsity, clusters, rank, and no droppable block holding them); the
        mappings say why, kept in ``left_out``."""
        groups, layers = dict(groups or {}), dict(layers or {})
        return replace(
            self,
            ratios={g: (0.0,) if g in groups else rs for g, rs in self.ratios.items()},
            bits={n: (FLOAT_BITS,) if n in layers else bs for n, bs in self.bits.items()},
            sparsity={n: c for n, c in self.sparsity.items() if n not in layers},
            clusters={n: c for n, c in self.clusters.items() if n not in layers},
            rank={n: c for n, c in self.rank.items() if n not in layers},
            skip=tuple(b for b in self.skip if not any(under(n, [b]) for n in layers)),
            left_out={**self.left_out, **{PRUNE + g: why for g, why in groups.items()},
                      **{BITS + n: why for n, why in layers.items()}})

    def restrict(self, policy: Policy) -> tuple[Policy, list[str]]:
        """``policy`` (carried from another model or made before) without what this space
        leaves out: those groups at ratio 0, those layers as they are; and the names
        changed, as ``prune.<group>`` / ``bits.<layer>``."""
        groups = {k.removeprefix(PRUNE) for k in self.left_out if k.startswith(PRUNE)}
        layers = {k.removeprefix(BITS) for k in self.left_out if k.startswith(BITS)}
        changed = [PRUNE + g for g in policy.prune if g in groups]
        changed += [BITS + n for n in policy.bits if n in layers]
        changed += [f"{kind}.{n}" for kind in ("sparsity", "clusters", "rank")
                    for n in getattr(policy, kind) if n in layers]
        if not changed:
            return policy, []
        return replace(
            policy, prune={g: r for g, r in policy.prune.items() if g not in groups},
            bits={n: b for n, b in policy.bits.items() if n not in layers},
            sparsity={n: v for n, v in policy.sparsity.items() if n not in layers},
            clusters={n: v for n, v in policy.clusters.items() if n not in layers},
            rank={n: v for n, v in policy.rank.items() if n not in layers},
            skip=tuple(b for b in policy.skip if not any(under(n, [b]) for n in layers)),
        ), changed

    @property
    def dimensions(self) -> int:
        bits = (1 if self.bits else 0) if self.model_bits else len(self.bits)
        return len(self.ratios) + bits + len(self.sparsity) + len(self.clusters) \
            + len(self.recipe) + len(self.rank) + len(self.skip)

    def all_ratios(self) -> tuple[float, ...]:
        """Every prune ratio some group allows, ascending (0 included)."""
        return tuple(sorted({r for rs in self.ratios.values() for r in rs}))

    def all_bits(self) -> tuple[int, ...]:
        """Every bit-width some layer allows, widest first."""
        return tuple(sorted({b for bs in self.bits.values() for b in bs}, reverse=True))

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions, one categorical per dimension."""
        dists: dict[str, BaseDistribution] = {}
        for group, choices in self.ratios.items():
            dists[PRUNE + group] = CategoricalDistribution(choices)
        if self.model_bits and self.bits:
            dists[ALL_BITS] = CategoricalDistribution(self.all_bits())
        else:
            for layer, choices in self.bits.items():
                dists[BITS + layer] = CategoricalDistribution(choices)
        for layer, choices in self.sparsity.items():
            dists[SPARSITY + layer] = CategoricalDistribution(choices)
        for layer, choices in self.clusters.items():
            dists[CLUSTERS + layer] = CategoricalDistribution(choices)
        for layer, choices in self.rank.items():
            dists[RANK + layer] = CategoricalDistribution(choices)
        for name, choices in self.recipe.items():
            dists[RECIPE + name] = CategoricalDistribution(choices)
        for block in self.skip:
            dists[SKIP + block] = CategoricalDistribution((0, 1))
        return dists

    def policy_from_params(self, params: Mapping[str, float | int]) -> Policy:
        prune = {k.removeprefix(PRUNE): float(v) for k, v in params.items()
                 if k.startswith(PRUNE) and float(v) > 0}
        if ALL_BITS in params:  # one bit-width, where each layer allows it
            params = {**params, **{BITS + n: _nearest(bs, int(params[ALL_BITS]))
                                   for n, bs in self.bits.items()}}
        bits = {k.removeprefix(BITS): int(v) for k, v in params.items()
                if k.startswith(BITS) and k != ALL_BITS and int(v) != 32}
        sparsity = {k.removeprefix(SPARSITY): float(v) for k, v in params.items()
                    if k.startswith(SPARSITY) and float(v) > 0}
        clusters = {k.removeprefix(CLUSTERS): int(v) for k, v in params.items()
                    if k.startswith(CLUSTERS) and int(v) > 0}
        rank = {k.removeprefix(RANK): float(v) for k, v in params.items()
                if k.startswith(RANK) and float(v) < 1.0}
        recipe = {k.removeprefix(RECIPE): v for k, v in params.items() if k.startswith(RECIPE)}
        skip = tuple(k.removeprefix(SKIP) for k, v in params.items()
                     if k.startswith(SKIP) and int(v) == 1)
        # a group whose every layer sits in a dropped block has no channels left to prune
        gone = {g.name for g in self.table.groups
                if skip and all(under(n, skip) for n in g.layers)}
        prune = {g: r for g, r in prune.items() if g not in gone}
        return Policy(prune=prune, bits=bits, model_signature=self.table.signature(),
                      sparsity=sparsity, clusters=clusters, recipe=recipe, rank=rank,
                      skip=skip)

    def params_from_policy(self, policy: Policy) -> dict[str, float | int]:
        params: dict[str, float | int] = {}
        for group in self.ratios:
            params[PRUNE + group] = policy.ratio(group)
        if self.model_bits and self.bits:  # the narrowest a layer runs at (mixed: see contains)
            params[ALL_BITS] = min((policy.bits_of(n) for n in self.bits), default=32)
        else:
            for layer in self.bits:
                params[BITS + layer] = policy.bits_of(layer)
        for layer in self.sparsity:
            params[SPARSITY + layer] = policy.sparsity.get(layer, 0.0)
        for layer in self.clusters:
            params[CLUSTERS + layer] = policy.clusters.get(layer, 0)
        for layer in self.rank:
            params[RANK + layer] = policy.rank.get(layer, 1.0)
        for name in self.recipe:  # only what the policy sets: unset means the spec's value
            if name in policy.recipe:
                params[RECIPE + name] = policy.recipe[name]
        for block in self.skip:
            params[SKIP + block] = int(block in policy.skip)
        return params

    def contains(self, policy: Policy) -> bool:
        params = self.params_from_policy(policy)
        dists = self.distributions()
        if ALL_BITS in params and self.policy_from_params(params).bits != policy.bits:
            return False  # mixed precision in a one-bit-width space
        return all(params[k] in d.choices  # type: ignore[attr-defined]
                   for k, d in dists.items() if k in params)  # recipe: unset is allowed

    def uniform(self, ratio: float, bits: int, rank: float = 1.0) -> Policy:
        """The same ratio in every group (capped by what each allows) and the same bits
        (where a layer allows them: a layer left out stays fp32);
        with ``rank`` < 1, that fraction of the rank in every layer with rank choices
        (raised to the nearest fraction each allows)."""
        prune = {g: max((r for r in rs if r <= ratio), default=0.0)
                 for g, rs in self.ratios.items()}
        return self.policy_from_params(
            {**{PRUNE + g: r for g, r in prune.items()},
             **{BITS + layer: _nearest(bs, bits) for layer, bs in self.bits.items()},
             **{RANK + layer: min(f for f in fs if f >= rank) for layer, fs in self.rank.items()}})

    def most_aggressive(self) -> list[Policy]:
        """The smallest model the space allows, once per bit-width (the fastest is one);
        every layer with rank choices at its smallest rank, every droppable block dropped."""
        all_bits = sorted({b for choices in self.bits.values() for b in choices})
        return [self.policy_from_params(
            {**{PRUNE + g: max(rs) for g, rs in self.ratios.items()},
             **{BITS + layer: _nearest(bs, b) for layer, bs in self.bits.items()},
             **{RANK + layer: min(fs) for layer, fs in self.rank.items()},
             **{SKIP + block: 1 for block in self.skip}}) for b in all_bits]


def _nearest(choices: tuple[int, ...], bits: int) -> int:
    """``bits`` if a layer allows it, else its allowed bit-width nearest to it."""
    return bits if bits in choices else min(choices, key=lambda c: abs(c - bits))


def _rank_choices(table: LayerTable, fractions: tuple[float, ...]) -> dict[str, tuple[float, ...]]:
    """``rank.<layer>`` choices: 1.0 (not factorised) plus the listed fractions worth trying.

    A layer gets the dimension only if it can be factorised (not a grouped/depthwise
    conv) and at least one listed fraction gives a rank whose two factors have fewer
    MACs than the layer (``slimtune.lowrank.worthwhile_fractions``); fractions that can
    only add MACs are left out, and fractions giving the same rank count once.
    """
    choices = {}
    for layer in table.layers:
        worth = worthwhile_fractions(layer, fractions)
        if worth:
            choices[layer.name] = (*worth, 1.0)
    return choices
