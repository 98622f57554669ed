"""Screening: the latency predictor decides which candidates are worth deploying.

Before anything is exported, every scored candidate's latency is predicted by the
measured per-layer table (:mod:`slimtune.measurement.predictor`), times a correction
learnt from the candidates measured so far (measured / predicted, as the env's budget
wall does). Predicted-feasible candidates are deployed and measured first, then (if too
few) those within budget at the best case measured so far (``Screen.possible``: their
class's smallest measured/predicted ratio), and every measurement moves the correction,
so a predictor that is optimistic on this machine today stops wasting measurements
after the first few.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from slimtune.methods.quantization import WeightQuantization
from slimtune.policy import Policy, under

#: measured/predicted ratios remembered for the correction
WINDOW = 12
#: the correction is this quantile of the recent ratios: a margin, not the average case
QUANTILE = 0.75
BOUNDS = (0.5, 3.0)
#: candidates predicted up to this factor over budget are still scored, and measured
#: when the ones predicted within budget run out: the per-layer predictor's error on a
#: small model is of this size (median 23% leave-one-out on the quickstart ResNet-20),
#: so a strict screen can shut out every candidate of a tight budget
SLACK = 1.3


@dataclass
class Screen:
    """Predicted latency of a policy with a learnt margin, against a budget in ms."""

    predict_ms: Callable[[Policy], float]
    budget_ms: float
    ratios: list[float] = field(default_factory=list)
    # refits the predictor on this job's (policy, measured ms) points, so its per-layer
    # terms learn what a single margin cannot (int8 on narrow layers is slower here);
    # None: only the margin learns
    refit: Callable[[list[tuple[Policy, float]]], None] | None = None
    measured: list[tuple[Policy, float]] = field(default_factory=list)
    # a fractional budget: the job's reference ms of the baseline. Predictions are then
    # the predictor's ratio to its own baseline, on this scale, so a baseline measured
    # under load (every figure of the job scaled by it) does not shift the screen
    scale_ms: float | None = None
    # the latency class of each ratio (see ``latency_class``): the predictor errs apart on
    # fp32 graphs, graphs with int8 layers and graphs with blocks dropped, so each class
    # learns its own margin
    classes: list[str] = field(default_factory=list)
    # policies this job has timed (key -> ms, the budget's units): predicted as measured
    known: dict[str, float] = field(default_factory=dict)
    # the layers that may run int8 (the space's): a policy with some of them int8 and
    # some fp32 is its own precision class, ``mixed`` (see ``precision``)
    layers: tuple[str, ...] = ()

    def correction(self, policy: Policy | None = None) -> float:
        """The QUANTILE of the last WINDOW measured/predicted ratios of ``policy``'s
        latency class (all classes when None; 1 before any), bounded so one outlier
        cannot move it far."""
        return self.margin(None if policy is None else latency_class(policy, self.layers))

    def margin(self, of: str | None = None) -> float:
        """The correction of one latency class (``fp32``, ``int8``, ``mixed``, each with
        ``+depth`` when blocks are dropped; None: all)."""
        recent = self._recent(of)
        if not recent:
            return 1.0
        return float(np.clip(np.quantile(recent, QUANTILE), *BOUNDS))

    def _recent(self, of: str | None) -> list[float]:
        mine = self.ratios if of is None else [
            r for r, c in zip(self.ratios, self.classes, strict=True) if c == of]
        return mine[-WINDOW:]

    def floor(self, of: str | None = None) -> float | None:
        """The lowest of one latency class's last WINDOW measured/predicted ratios (the
        best case the measurements so far allow), bounded; None before two."""
        recent = self._recent(of)
        return float(np.clip(min(recent), *BOUNDS)) if len(recent) >= 2 else None

    def optimistic_ms(self, policy: Policy) -> float:
        """``policy``'s latency at the best case its class has measured (the predictor's
        figure times :meth:`floor`; ``predicted_ms`` / SLACK before two measurements of
        the class); for a policy this job has timed, its measurement."""
        known = self.known.get(policy.key())
        if known is not None:
            return known
        low = self.floor(latency_class(policy, self.layers))
        if low is None:
            return self.predicted_ms(policy) / SLACK
        return self.raw_ms(policy) * low

    def possible(self, policy: Policy) -> bool:
        """Within budget at the best case measured so far (:meth:`optimistic_ms`): a
        candidate near the boundary worth a measurement; one that is not would miss the
        budget even with the predictor's smallest error seen on its class."""
        return self.optimistic_ms(policy) <= self.budget_ms

    def raw_ms(self, policy: Policy) -> float:
        """The predictor's figure (relative to its baseline on ``scale_ms`` if set)."""
        ms = self.predict_ms(policy)
        if self.scale_ms is None:
            return ms
        return ms / max(self.predict_ms(Policy()), 1e-9) * self.scale_ms

    def predicted_ms(self, policy: Policy) -> float:
        """The predictor's figure times the learnt correction; for a policy this job has
        timed (an anchor, a reference, a candidate), its measurement."""
        known = self.known.get(policy.key())
        if known is not None:
            return known
        return self.raw_ms(policy) * self.correction(policy)

    def admits(self, policy: Policy, slack: float = 1.0) -> bool:
        """Predicted within ``slack`` times the budget (1: within it)."""
        return self.predicted_ms(policy) <= self.budget_ms * slack

    def know(self, policy: Policy, measured_ms: float) -> None:
        """Predict ``policy`` as ``measured_ms`` from now on (a re-timing of a policy
        already recorded: nothing new for the margin or the refit)."""
        if measured_ms > 0:
            self.known[policy.key()] = measured_ms

    def record(self, policy: Policy, measured_ms: float, *, margin: bool = True) -> None:
        """Learn from a measurement of ``policy`` (in the budget's units). ``margin=False``
        (the references: uniform policies, another region of the space than the search's)
        refits the predictor without moving the margin the searched candidates get."""
        raw = self.raw_ms(policy)  # before the refit: an out-of-sample error
        self.know(policy, measured_ms)
        if raw > 0 and measured_ms > 0:
            if margin:
                self.ratios.append(measured_ms / raw)
                self.classes.append(latency_class(policy, self.layers))
            self.measured.append((policy, self._own_scale(measured_ms)))  # its own scale
            if self.refit is not None:
                self.refit(list(self.measured))

    def record_anchors(self, points: Sequence[tuple[Policy, float]]) -> None:
        """Learn from anchors timed together before the search: the predictor is refit on
        all of them, and each one's margin ratio is its leave-one-out error (measured over
        the prediction refit on the others), so the margin is what the refit leaves, not
        the error of the table before it saw this machine."""
        points = [(p, m) for p, m in points if m > 0]
        self.known.update((p.key(), m) for p, m in points)
        if self.refit is None:
            for policy, ms in points:
                self.record(policy, ms)
            return
        own = [(p, self._own_scale(m)) for p, m in points]
        before = list(self.measured)
        for i, (policy, ms) in enumerate(points):
            self.refit(before + [pt for j, pt in enumerate(own) if j != i])
            raw = self.raw_ms(policy)
            if raw > 0:
                self.ratios.append(ms / raw)
                self.classes.append(latency_class(policy, self.layers))
        self.measured = before + own
        self.refit(list(self.measured))

    def _own_scale(self, measured_ms: float) -> float:
        """A measurement in the budget's units put on the predictor's own scale."""
        if self.scale_ms is None:
            return measured_ms
        return measured_ms * self.predict_ms(Policy()) / self.scale_ms


def precision(policy: Policy, layers: Sequence[str] = ()) -> str:
    """``fp32`` when no layer runs at 8 bits or fewer; ``int8`` when every one of
    ``layers`` (those that may run int8) does; ``mixed`` when some of them stay fp32.

    The predictor errs apart on the three: on the 2-core development machine the
    alternating int8/fp32 anchor ran at 0.77x-0.83x of the baseline where the all-int8 and
    all-fp32 anchors of the same ratio ran at 0.50x-0.63x and 0.55x-0.58x, so a margin
    shared with mixed graphs made every all-int8 candidate look slower than it is."""
    int8 = set(WeightQuantization.int8_layers(policy))
    if not int8:
        return "fp32"
    kept = (n for n in layers if not under(n, policy.skip))  # a dropped block's layers: gone
    return "mixed" if any(n not in int8 for n in kept) else "int8"


def latency_class(policy: Policy, layers: Sequence[str] = ()) -> str:
    """The policy's ``precision``, with ``+depth`` when it drops residual blocks.

    The layer table errs apart on the two (a dropped block costs nothing; a pruned one
    keeps its fixed per-layer cost): on the quickstart ResNet-20 at 30% the pruned fp32
    anchors' margin was x1.86-2.05 and the depth anchors' x1.64, and the pruned margin,
    applied to policies dropping blocks, had screened out most of the region near the
    budget (39 of 160 candidates admitted, 66 with the depth classes)."""
    name = precision(policy, layers)
    return f"{name}+depth" if policy.skip else name
