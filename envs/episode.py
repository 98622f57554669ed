"""PolicyBuilder: one episode's decisions, layer by layer, behind AMC's budget wall.

Step ``t`` decides layer ``t`` of the LayerTable (execution order): its bit-width, and
the prune ratio of its channel group if no earlier layer of the group set it. Before a
decision is taken, it is clipped (AMC's rule) so that the predicted latency of the
policy, with every later layer at its most aggressive setting, stays within the budget;
when no choice can, the most aggressive one is taken.

Predictions are multiplied by ``correction``, the typical ratio of measured to
predicted latency seen so far (see ``ProxyEvaluator.correction``): the table's errors
are systematic (per-op overheads, the machine's state), so the wall learns them from
the measurements every episode ends with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimtune.envs.features import OBS_FEATURES, OBS_HIGH, OBS_LOW, STATIC, static_features
from slimtune.envs.problem import CompressionProblem
from slimtune.layers import LayerInfo
from slimtune.policy import FLOAT_BITS, Policy


@dataclass(frozen=True)
class Choice:
    """One layer's decision: its group's prune ratio and its weight bit-width."""

    ratio: float
    bits: int


@dataclass(frozen=True)
class Decision:
    """What a step proposed, what the wall let through, and the predicted latency floor."""

    layer: str
    proposed: Choice
    chosen: Choice
    predicted_ms: float  # with every later layer at its most aggressive setting

    @property
    def clipped(self) -> bool:
        return self.proposed != self.chosen


class PolicyBuilder:
    """Builds one Policy, one layer per ``decide`` call."""

    def __init__(self, problem: CompressionProblem, *, correction: float = 1.0) -> None:
        self.problem = problem
        self.correction = correction  # measured / predicted, learnt from measurements
        self.layers: tuple[LayerInfo, ...] = problem.table.layers
        self._static = static_features(problem.table)
        self._max_ratio = max(max(rs) for rs in problem.space.ratios.values())
        self._all_bits = sorted({b for bs in problem.space.bits.values() for b in bs},
                                reverse=True)
        self._total_macs = sum(li.macs for li in self.layers) or 1
        self._macs_from = np.cumsum([li.macs for li in self.layers][::-1])[::-1]
        self.prune: dict[str, float] = {}
        self.bits: dict[str, int] = {}
        self.decisions: list[Decision] = []

    @property
    def step(self) -> int:
        return len(self.decisions)

    @property
    def done(self) -> bool:
        return self.step >= len(self.layers)

    def policy(self) -> Policy:
        return self._policy(self.prune, self.bits)

    def _policy(self, prune: dict[str, float], bits: dict[str, int]) -> Policy:
        return Policy(prune={g: r for g, r in prune.items() if r > 0},
                      bits={n: b for n, b in bits.items() if b != FLOAT_BITS},
                      model_signature=self.problem.table.signature())

    # -- the wall -------------------------------------------------------------------

    def choices(self, layer: LayerInfo) -> tuple[list[float], list[int]]:
        """The ratios this step may set (one if the group is fixed) and the bit-widths."""
        space = self.problem.space
        group = layer.group
        if group is None:
            ratios = [0.0]
        elif group in self.prune:
            ratios = [self.prune[group]]
        else:
            ratios = list(space.ratios[group])
        return ratios, list(space.bits[layer.name])

    def floor_ms(self, prune: dict[str, float], bits: dict[str, int], after: int) -> float:
        """Predicted latency with the given decisions and every layer from ``after`` on
        (and every undecided group) at its most aggressive setting.

        The fastest bit-width is not always the lowest (int8 kernels can be slower on
        narrow layers), so each available bit-width is tried for the remaining layers.
        """
        space = self.problem.space
        full_prune = {g: max(rs) for g, rs in space.ratios.items()}
        full_prune.update(prune)
        best = float("inf")
        for b in self._all_bits:
            full_bits = dict(bits)
            for li in self.layers[after:]:
                full_bits[li.name] = b if b in space.bits[li.name] else min(space.bits[li.name])
            best = min(best, self.correction * self.problem.predictor.predict_ms(
                self._policy(full_prune, full_bits)))
        return best

    def _nearest(self, proposal: Choice, options: list[tuple[Choice, float]]) -> Choice:
        def distance(c: Choice) -> float:
            return (abs(c.ratio - proposal.ratio) / max(self._max_ratio, 1e-9)
                    + 0.5 * float(c.bits != proposal.bits))
        return min((c for c, _ in options), key=distance)

    def decide(self, proposal: Choice) -> Decision:
        """Clip ``proposal`` to the wall, record it, and return the decision."""
        layer = self.layers[self.step]
        ratios, bits_options = self.choices(layer)
        proposal = Choice(min(ratios, key=lambda r: abs(r - proposal.ratio)),
                          min(bits_options, key=lambda b: abs(b - proposal.bits)))
        budget = self.problem.budget_ms
        options = []
        for r in ratios:
            for b in bits_options:
                prune = dict(self.prune)
                if layer.group is not None:
                    prune[layer.group] = r
                options.append((Choice(r, b),
                                self.floor_ms(prune, {**self.bits, layer.name: b},
                                              self.step + 1)))
        feasible = [(c, ms) for c, ms in options if ms <= budget]
        if feasible:
            chosen = self._nearest(proposal, feasible)
            predicted = dict((c, ms) for c, ms in options)[chosen]
        else:
            chosen, predicted = min(options, key=lambda t: t[1])
        if layer.group is not None:
            self.prune[layer.group] = chosen.ratio
        self.bits[layer.name] = chosen.bits
        decision = Decision(layer.name, proposal, chosen, predicted)
        self.decisions.append(decision)
        return decision

    # -- actions and observations ---------------------------------------------------

    def choice_from_action(self, action: np.ndarray) -> Choice:
        """Map an action in [-1, 1]^2 to a proposal: a ratio in [0, max ratio], a bit-width
        by rank (-1: the most bits, 1: the fewest)."""
        a = (np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0) + 1.0) / 2.0
        layer = self.layers[self.step]
        bits_options = sorted(self.problem.space.bits[layer.name], reverse=True)
        index = min(int(a[1] * len(bits_options)), len(bits_options) - 1)
        return Choice(float(a[0]) * self._max_ratio, bits_options[index])

    def observation(self) -> np.ndarray:
        """The features of the layer about to be decided (the last layer once done)."""
        t = min(self.step, len(self.layers) - 1)
        layer = self.layers[t]
        cut = 1.0 - self.problem.channels.macs(self._policy(self.prune, {})) / self._total_macs
        group_fixed = layer.group is not None and layer.group in self.prune
        prev = self.decisions[-1].chosen if self.decisions else Choice(0.0, FLOAT_BITS)
        p = self.problem
        dynamic = [
            max(cut, 0.0),
            self._macs_from[t] / self._total_macs,
            float(layer.group is not None and not group_fixed),
            self.prune.get(layer.group, 0.0) if group_fixed else 0.0,
            prev.ratio, prev.bits / FLOAT_BITS,
            p.budget_ms / p.baseline_ms,
            self.floor_ms(self.prune, self.bits, t) / p.baseline_ms,
        ]
        obs = np.concatenate([self._static[t], np.asarray(dynamic, dtype=np.float32)])
        assert obs.shape == (len(OBS_FEATURES),) and STATIC == len(self._static[t])
        return np.clip(obs, OBS_LOW, OBS_HIGH).astype(np.float32)
