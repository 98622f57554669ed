"""Candidates ranked by score within the score's noise, toward the budget.

A score is top-1 accuracy on the first ``n`` validation examples, so two scores closer
than one binomial standard error, ``sqrt(p (1 - p) / n)``, are not told apart by it (on
500 images at 0.84, 1.6 pp). Among the candidates level with the best score, the one
that spends more of the latency budget comes first: after the same fine-tune a larger
network recovers more. Breaking those ties toward the smaller predicted latency, as
the stages did before, handed out 0.40x-0.43x of the baseline against a 0.5 budget
(and 0.22x against 0.3) while the supernet scores of the timed candidates spanned
0.838-0.848 on 500 images: within one standard error of each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from slimtune.result import TrialResult

__all__ = ["ranked", "score_noise"]


def score_noise(score: float, examples: int | None) -> float:
    """One binomial standard error of a top-1 ``score`` counted on ``examples`` examples
    (0 when the count is unknown: scores are then taken at face value)."""
    if not examples:
        return 0.0
    p = min(max(score, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / examples)


def ranked(rows: Sequence[TrialResult], examples: int | None,
           latency: Callable[[TrialResult], float]) -> list[TrialResult]:
    """``rows`` (each with a score) best first: those within :func:`score_noise` of the
    best score, largest ``latency`` first (they are level on score; the one nearer the
    budget has more to recover with), then the rest by score, ties toward the larger
    ``latency``."""
    rows = [r for r in rows if r.score is not None]
    if not rows:
        return []
    best = max(r.score or 0.0 for r in rows)
    noise = score_noise(best, examples)
    level = [r for r in rows if (r.score or 0.0) >= best - noise]
    rest = [r for r in rows if (r.score or 0.0) < best - noise]
    return (sorted(level, key=lambda r: -latency(r))
            + sorted(rest, key=lambda r: (-(r.score or 0.0), -latency(r))))
