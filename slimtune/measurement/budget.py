"""A job's latency budget, and a paired timing judged against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.measurement.paired import PairedLatency, scaled

#: a pooled timing within this fraction of the budget is within this machine's drift
#: between timings (see ``slimtune.measurement.paired``): the budget decision is not yet made
EDGE = 0.1


@dataclass(frozen=True)
class Budget:
    """The job's budget: a fraction of the baseline (checked on the paired ratio) or ms
    (checked on the candidate's own median). ``ms`` is the fraction's ms equivalent."""

    ms: float
    fraction: float | None
    baseline_ms: float  # the baseline's reference median, measured once per job

    def met(self, paired: PairedLatency) -> bool:
        if self.fraction is not None:
            return paired.ratio <= self.fraction
        return paired.candidate.median_ms <= self.ms

    def near(self, paired: PairedLatency) -> bool:
        """Within ``EDGE`` of the budget: another timing may turn the decision."""
        figure, limit = ((paired.ratio, self.fraction) if self.fraction is not None
                         else (paired.candidate.median_ms, self.ms))
        return abs(figure / limit - 1.0) <= EDGE

    def latency_ms(self, paired: PairedLatency) -> float:
        """The figure reported as ``latency_ms``: the ratio on the reference scale for a
        fractional budget, the candidate's own median for an ms budget."""
        return paired.ms(self.baseline_ms) if self.fraction is not None \
            else paired.candidate.median_ms


def judged(paired: PairedLatency, budget: Budget) -> tuple[Any, float, bool]:
    """(the candidate's stats on the budget's scale, the ratio, within the budget)."""
    factor = budget.latency_ms(paired) / max(paired.candidate.median_ms, 1e-12)
    return scaled(paired.candidate, factor), paired.ratio, budget.met(paired)
