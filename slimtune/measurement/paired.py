"""Paired latency: a candidate timed round by round against the baseline.

Load on a shared machine comes in bursts. Timing the candidate and the baseline
interleaved (round r times both, then round r+1) lets a burst slow both, and the ratio
of their medians stays put; ``budget.latency_fraction`` is checked on that ratio. The
candidate's ms figure is the ratio times the baseline's reference median (measured once
at the start of the job), so figures stay comparable across the job.

Pairing cancels a burst within a timing, not the drift between timings: on the 2-core
development machine the same int8 ResNet-20 measured 0.50x, 0.53x, 0.55x and 0.60x of
its baseline in four paired timings within three minutes. So an architecture timed more than
once (an anchor, a reference, a candidate, its final model) is judged on all its rounds
(:func:`pooled`, kept per policy by :class:`PairedTimings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.measurement.latency import LatencyStats, MeasureProtocol
from slimtune.spec import TargetSpec

#: rounds of a paired measurement; each round times both models once. 15 calls a round,
#: not 30: halving them did not widen the spread between timings (sd 0.026 of the ratio
#: over 7 timings of 9 x 30 calls, 0.023 over 7 of 9 x 15, in 10.1 s and 5.9 s, on the
#: quickstart's int8 ResNet-20, interleaved): drift between timings dominates it, and
#: pooling a decision's timings at the budget's edge (``pipeline.measure``) handles that
PAIRED_PROTOCOL = MeasureProtocol(warmup=10, rounds=9, repeats=15, min_seconds_per_round=0.1)


@dataclass(frozen=True)
class PairedLatency:
    """A candidate's latency relative to the baseline's, timed in the same rounds."""

    ratio: float  # median over rounds of candidate / baseline round medians
    candidate: LatencyStats
    baseline: LatencyStats

    def ms(self, baseline_ms: float) -> float:
        """The candidate's latency on the baseline's reference scale."""
        return self.ratio * baseline_ms

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "candidate": self.candidate.to_dict(),
                "baseline": self.baseline.to_dict()}


def pooled(timings: Sequence[PairedLatency]) -> PairedLatency:
    """Several paired timings of one architecture as one: every round of each, the ratio
    the median of all the rounds' ratios (one timing is returned as it is)."""
    if not timings:
        raise ValueError("pooled() needs at least one timing")
    if len(timings) == 1:
        return timings[0]
    cand = _pooled_stats([t.candidate for t in timings])
    base = _pooled_stats([t.baseline for t in timings])
    return PairedLatency(paired_ratio(cand, base), cand, base)


def _pooled_stats(stats: Sequence[LatencyStats]) -> LatencyStats:
    """One model's figures over the rounds of several timings: the median is the median
    of all round medians (as one interleaved timing's is), spread figures the widest."""
    rounds = tuple(m for s in stats for m in s.round_medians_ms)
    samples = sum(s.samples for s in stats)
    return replace(stats[0], median_ms=float(np.median(rounds)),
                   p10_ms=min(s.p10_ms for s in stats), p90_ms=max(s.p90_ms for s in stats),
                   mean_ms=sum(s.mean_ms * s.samples for s in stats) / max(samples, 1),
                   cv=max(s.cv for s in stats), samples=samples, rounds=len(rounds),
                   rejected_rounds=sum(s.rejected_rounds for s in stats),
                   round_medians_ms=rounds, cached=False)


@dataclass
class PairedTimings:
    """Every paired timing this job made, by policy key: what :func:`pooled` judges."""

    by_policy: dict[str, list[PairedLatency]] = field(default_factory=dict)

    def add(self, key: str, timing: PairedLatency) -> PairedLatency:
        """Keep ``timing``; returns the policy's pooled timing."""
        self.by_policy.setdefault(key, []).append(timing)
        return pooled(self.by_policy[key])

    def of(self, key: str) -> tuple[PairedLatency, ...]:
        return tuple(self.by_policy.get(key, ()))


def paired_ratio(candidate: LatencyStats, baseline: LatencyStats) -> float:
    """Median of the per-round ratios: a round's burst moves both of its figures."""
    pairs = zip(candidate.round_medians_ms, baseline.round_medians_ms, strict=True)
    return float(np.median([c / b for c, b in pairs if b > 0]))


def measure_paired(candidate: Any, baseline: Any, target: TargetSpec,
                   input_shape: tuple[int, ...],
                   protocol: MeasureProtocol = PAIRED_PROTOCOL) -> PairedLatency:
    """Time ``candidate`` and ``baseline`` (.onnx paths, or modules for the torch runtime)
    interleaved on the spec's target; never cached (the pair is the measurement)."""
    from slimtune.measurement.targets import measure_many_on_target

    cand, base = measure_many_on_target(
        target.name, [(_subject(candidate), input_shape), (_subject(baseline), input_shape)],
        runtime=target.runtime, batch_size=target.batch_size, threads=target.threads,
        protocol=protocol, interleave=True)
    return PairedLatency(paired_ratio(cand, base), cand, base)


def _subject(s: Any) -> Any:
    return Path(s) if isinstance(s, str) else s


def scaled(stats: LatencyStats, factor: float) -> LatencyStats:
    """``stats`` with every figure multiplied (a paired figure put on the reference scale)."""
    return replace(stats, median_ms=stats.median_ms * factor, p10_ms=stats.p10_ms * factor,
                   p90_ms=stats.p90_ms * factor, mean_ms=stats.mean_ms * factor,
                   round_medians_ms=tuple(m * factor for m in stats.round_medians_ms))
