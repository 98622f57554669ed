"""Carry a saved Policy to another model by matching layers on their features.

Names differ between models, so each layer of the new model is matched to the layer of
the old one that is most alike: same kind first (conv, depthwise, linear), then the
closest relative depth, then the same stride and kernel. The new layer takes its
match's bit-width, and each new channel group takes the prune ratio of the group that
owns its root layer's match (snapped to the ratios the new space allows); rank,
sparsity and cluster counts travel the same way, layer by layer, where the new space
offers them, and the fine-tune recipe as it is. The mapping is returned so it can be
shown to the user, with what the new job's space cannot hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.errors import UserInputError
from slimtune.layers import LayerInfo, LayerTable
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace


@dataclass(frozen=True)
class LayerMatch:
    """One new layer and the old layer whose decisions it takes."""

    target: str
    source: str
    target_depth: float
    source_depth: float
    kind: str
    ratio: float
    bits: int

    def describe(self) -> str:
        return (f"{self.target} (depth {self.target_depth:.2f}, {self.kind}) <- "
                f"{self.source} (depth {self.source_depth:.2f}): ratio {self.ratio:g}, "
                f"{self.bits} bits")


def _distance(a: LayerInfo, b: LayerInfo) -> tuple[float, ...]:
    return (float(a.kind != b.kind), abs(a.depth - b.depth), float(a.stride != b.stride),
            float(a.kernel != b.kernel))


def carry_policy(policy: Policy, source: LayerTable,
                 target_space: SearchSpace) -> tuple[Policy, list[LayerMatch]]:
    """``policy`` (made for ``source``) as a policy of ``target_space``'s model."""
    target = target_space.table
    owner = {li.name: li.group for li in source.layers}
    matches, prune, bits = [], {}, {}
    for li in target.layers:
        match = min(source.layers, key=lambda s, li=li: _distance(li, s))
        src_group = owner[match.name]
        ratio = policy.ratio(src_group) if src_group is not None else 0.0
        b = policy.bits_of(match.name)
        allowed_bits = target_space.bits[li.name]
        b = b if b in allowed_bits else min(allowed_bits, key=lambda x, b=b: abs(x - b))
        bits[li.name] = b
        if li.group == li.name:  # the group's root decides its ratio
            allowed = target_space.ratios[li.group]
            ratio = min(allowed, key=lambda r, ratio=ratio: abs(r - ratio))
            prune[li.group] = ratio
        matches.append(LayerMatch(li.name, match.name, li.depth, match.depth, li.kind,
                                  prune.get(li.group, 0.0) if li.group else 0.0, b))
    by_target = {m.target: m.source for m in matches}
    carried = Policy(prune={g: r for g, r in prune.items() if r > 0},
                     bits={n: b for n, b in bits.items() if b != 32},
                     model_signature=target.signature(),
                     sparsity=_carry(policy.sparsity, by_target, target_space.sparsity, 0.0),
                     clusters=_carry(policy.clusters, by_target, target_space.clusters, 0),
                     rank=_carry(policy.rank, by_target, target_space.rank, 1.0),
                     recipe=dict(policy.recipe))  # model-independent: taken as is
    return carried, matches


def _carry(values: dict, by_target: dict[str, str], choices: dict, off: float) -> dict:
    """Per-layer ``values`` of the source, for each target layer the space offers the
    dimension on: its match's value, snapped to the nearest allowed choice (``off``, the
    choice that leaves the layer alone, is left out of the policy)."""
    out = {}
    for target, source in by_target.items():
        if source in values and target in choices:
            value = min(choices[target], key=lambda c, v=values[source]: abs(c - v))
            if value != off:
                out[target] = value
    return out


def dropped_dimensions(policy: Policy, space: SearchSpace) -> list[str]:
    """The parts of ``policy`` that ``space`` does not search at all: a warm start can't
    keep them (the job's searcher only proposes what its space holds)."""
    return [name for name in ("sparsity", "clusters", "rank", "recipe")
            if getattr(policy, name) and not getattr(space, name)]


def read_policy_file(path: Path, table: LayerTable) -> tuple[Policy, LayerTable]:
    """A saved policy and the LayerTable of the model it was made for.

    The table comes from ``layers.json`` beside the policy (every trial and ``apply``
    write one); it is only required when the policy was made for another model.
    """
    from slimtune.trial import LAYERS_FILE

    if not path.is_file():
        raise UserInputError(f"{path}: no such policy file")
    try:
        policy = Policy.load(path)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not a policy file ({str(err).splitlines()[0]})") from None
    if policy.model_signature in ("", table.signature()):
        return policy, table
    layers = path.parent / LAYERS_FILE
    if not layers.is_file():
        raise UserInputError(f"{path}: made for another model ({policy.model_signature}); "
                             f"carrying it needs the {LAYERS_FILE} saved beside it")
    try:
        source = LayerTable.from_dict(json.loads(layers.read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise UserInputError(f"{layers}: not a layer table ({err})") from None
    if source.signature() != policy.model_signature:
        raise UserInputError(f"{layers}: describes model {source.signature()}, the policy "
                             f"was made for {policy.model_signature}")
    return policy, source


def check_warm_start(path: Path, table: LayerTable) -> None:
    """Validate a ``search.warm_start_from`` file before any compute (one-line errors)."""
    if path.suffix == ".zip":
        from slimtune.agents.agent import read_agent_file

        read_agent_file(path)
    else:
        read_policy_file(path, table)


def warm_start_policy(path: Path, space: SearchSpace,
                      problem_factory: Callable[[], Any]) -> tuple[Policy, list[str]]:
    """The policy a warm-start file gives on ``space``'s model, and how it was made."""
    if path.suffix == ".zip":
        from slimtune.agents.agent import CompressionAgent
        from slimtune.agents.ppo import propose_measured
        from slimtune.envs.compression import CompressionEnv

        agent = CompressionAgent.load(path)
        env = CompressionEnv(problem=problem_factory())
        policy, attempts = propose_measured(agent, env)
        policy, _ = space.restrict(policy)  # the env offers no more than the space
        return policy, [f"agent {path.name} run on this model: " + ", ".join(
            f"{a.measured_ms:.3f} ms measured" for a in attempts), *left_out_note(space)]
    policy, source = read_policy_file(path, space.table)
    dropped = dropped_dimensions(policy, space)
    note = [f"  not carried: {', '.join(dropped)} (this job's space has no such dimension; "
            "add it under space: to keep it)"] if dropped else []
    if source is space.table:
        policy, changed = space.restrict(policy)
        return policy, [f"policy {path.name} (made for this model)", *note,
                        *left_out_note(space, changed)]
    carried, matches = carry_policy(policy, source, space)
    return carried, [f"policy {path.name} carried from model {source.signature()}:",
                     *(f"  {m.describe()}" for m in matches), *note, *left_out_note(space)]


def left_out_note(space: SearchSpace, changed: list[str] | None = None) -> list[str]:
    """One line naming what ``space`` leaves out (or, given ``changed``, what of a policy
    was set back for it): those groups get ratio 0, those layers stay as they are."""
    names = sorted(space.left_out) if changed is None else changed
    if not names:
        return []
    return [f"  left as they are (ratio 0, fp32), not in this job's space: {', '.join(names)}"]
