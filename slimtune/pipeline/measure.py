"""Stage 2: the best-scored candidates deployed and timed paired with the baseline."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from slimtune.compress import count_macs_params, packed_size_bytes
from slimtune.measurement.budget import EDGE, Budget, judged
from slimtune.measurement.latency import machine_lock
from slimtune.measurement.paired import PairedLatency, PairedTimings, measure_paired, pooled
from slimtune.measurement.screening import Screen
from slimtune.methods.apply import compressed_structure
from slimtune.pipeline.rank import ranked
from slimtune.result import TrialResult
from slimtune.trial import TrialContext, deploy

__all__ = ["EDGE", "MAX_TIMINGS", "Budget", "judged", "measure_candidate",
           "measure_candidates", "measurement_order", "paired_timing", "settle_the_edge"]

#: paired timings of one architecture at most, before a decision at the edge stands
MAX_TIMINGS = 3


def paired_timing(ctx: TrialContext, baseline: Any, budget: Budget,
                  earlier: Sequence[PairedLatency] = ()):
    """A ``slimtune.trial.Timing``: the deployed model timed paired with ``baseline``
    (the baseline's .onnx, or its module for the torch runtime), judged on its rounds
    pooled with ``earlier`` timings of the same architecture. A pooled figure within
    ``EDGE`` of the budget is timed again, up to ``MAX_TIMINGS`` timings in all: the final
    row's feasibility is a decision like the ones before it."""

    def timing(deployed: Any) -> tuple[Any, float, bool]:
        subject = deployed.onnx_path or deployed.model

        def once() -> PairedLatency:
            return measure_paired(subject, baseline, ctx.spec.target, ctx.data.input_shape)

        runs = [*earlier, once()]
        while len(runs) < MAX_TIMINGS and budget.near(pooled(runs)):
            runs.append(once())
        return judged(pooled(runs), budget)

    return timing


def measure_candidate(ctx: TrialContext, row: TrialResult, baseline: Any,
                      budget: Budget, timings: PairedTimings | None = None) -> TrialResult:
    """Deploy ``row``'s policy (its architecture: weights do not move latency) and time it
    paired with the baseline: a ``measured`` row, judged on every timing ``timings`` holds
    of that policy (this one kept there)."""
    timings = timings if timings is not None else PairedTimings()
    policy = row.policy
    with machine_lock("shared"):
        model = compressed_structure(ctx.baseline_model(), ctx.table, policy,
                                     round_to=ctx.spec.space.round_to)
        macs, params = count_macs_params(model, ctx.data.input_shape)
    with tempfile.TemporaryDirectory(prefix="slimtune-measure-") as tmp:
        with machine_lock("shared"):
            deployed = deploy(ctx, model, policy, Path(tmp) / "candidate.onnx")
        paired = measure_paired(deployed.onnx_path or deployed.model, baseline,
                                ctx.spec.target, ctx.data.input_shape)
    stats, ratio, met = judged(timings.add(policy.key(), paired), budget)
    return replace(row, stage="measured", state="ok" if met else "infeasible",
                   latency_ms=stats.median_ms, latency=stats.to_dict(), latency_ratio=ratio,
                   macs=macs, params=params,
                   size_bytes=packed_size_bytes(model, ctx.table, policy))


def measurement_order(rows: Sequence[TrialResult],
                      examples: int | None = None) -> list[TrialResult]:
    """Scored, predicted-feasible rows, best first by :func:`rank.ranked` (those level
    with the best score within its noise on ``examples`` examples, largest predicted
    latency first), each policy once: the candidates the final stage would take are
    timed first (a candidate that a looser screen admitted is re-screened with the
    margin learnt by then)."""
    seen: set[str] = set()
    order = ranked([r for r in rows if r.state == "ok"], examples,
                   lambda r: r.predicted_latency_ms or 0.0)
    return [r for r in order if not (r.policy.key() in seen or seen.add(r.policy.key()))]


def measure_candidates(ctx: TrialContext, rows: Sequence[TrialResult], screen: Screen, *,
                       count: int, baseline: Any, budget: Budget,
                       on_row: Callable[[TrialResult], None],
                       timings: PairedTimings | None = None,
                       examples: int | None = None) -> list[TrialResult]:
    """Time up to ``count`` candidates in :func:`measurement_order` (scores counted on
    ``examples`` examples), re-screening each with the margin the measurements so far
    have taught: those predicted within budget first, then (if fewer than ``count``)
    those :meth:`Screen.possible` (within budget at the smallest error the measurements
    of their latency class have shown); each measurement is recorded by the screen.
    Returns the ``measured`` rows.

    The near-boundary pass is not cut short once a few met the budget: the best models
    lie at the boundary, and a margin learnt from a few anchors is a cautious one (at 30%
    with elastic depth, stopping after two left the search at 0.23x of the baseline).
    Nor does it time what cannot meet the budget: with a fixed 1.3x slack, 7 of 8 timed
    at 50% had been predicted 6-27% over it, and all 7 missed it."""
    measured: list[TrialResult] = []
    order = measurement_order(rows, examples)
    timed: set[int] = set()
    # predicted within budget first, then those within it at the best case measured
    for admits in (screen.admits, screen.possible):
        for row in order:
            if len(measured) >= count:
                return measured
            if row.trial_id in timed or not admits(row.policy):
                continue
            done = measure_candidate(ctx, row, baseline, budget, timings)
            screen.record(row.policy, done.latency_ms or 0.0)
            on_row(done)
            measured.append(done)
            timed.add(row.trial_id)
    return measured


def settle_the_edge(ctx: TrialContext, rows: Sequence[TrialResult], *, take: int,
                    baseline: Any, budget: Budget, timings: PairedTimings,
                    on_row: Callable[[TrialResult], None],
                    screen: Screen | None = None,
                    examples: int | None = None) -> list[TrialResult]:
    """Time again the measured rows the final stage would take or turn down by drift:
    in the final stage's order (:func:`rank.ranked` on the measured latency, scores
    counted on ``examples`` examples) until ``take`` are within the budget, each whose
    pooled timing is within ``EDGE`` of the budget is timed again (``MAX_TIMINGS`` in
    all) and judged on all its rounds. Returns ``rows`` with those rows advanced, in the
    same order."""
    out = {r.trial_id: r for r in rows}
    within = 0
    for row in ranked(rows, examples, lambda r: r.latency_ms or 0.0):
        if within >= take:
            break
        key = row.policy.key()
        while (0 < len(timings.of(key)) < MAX_TIMINGS
               and budget.near(pooled(timings.of(key)))):
            row = measure_candidate(ctx, row, baseline, budget, timings)
            if screen is not None:
                screen.know(row.policy, row.latency_ms or 0.0)
            on_row(row)
        out[row.trial_id] = row
        within += row.feasible
    return [out[r.trial_id] for r in rows]
