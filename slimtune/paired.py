"""Paired latency: a candidate timed round by round against the baseline.

Load on a shared machine comes in bursts. Timing the candidate and the baseline
interleaved (round r times both, then round r+1) lets a burst slow both, and the ratio
of their medians stays put; ``budget.latency_fraction`` is checked on that ratio. The
candidate's ms figure is the ratio times the baseline's reference median (measured once
at the start of the job), so figures stay comparable across the job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.latency import LatencyStats, MeasureProtocol
from slimtune.spec import TargetSpec

#: rounds of a paired measurement; each round times both models once
PAIRED_PROTOCOL = MeasureProtocol(warmup=10, rounds=9, repeats=30, min_seconds_per_round=0.1)


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


def paired_ratio(candidate: LatencyStats, baseline: LatencyStats) -> float:
    """Median of the per-round ratios: a round's burst moves both of its figures."""
    pairs = zip(candidate.round_medians_ms, baseline.round_medians_ms, strict=True)
    return float(np.median([c / b for c, b in pairs if b > 0]))


def measure_paired(candidate: Any, baseline: Any, target: TargetSpec,
                   input_shape: tuple[int, ...],
                   protocol: MeasureProtocol = PAIRED_PROTOCOL) -> PairedLatency:
    """Time ``candidate`` and ``baseline`` (.onnx paths, or modules for the torch runtime)
    interleaved on the spec's target; never cached (the pair is the measurement)."""
    from slimtune.targets import measure_many_on_target

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
