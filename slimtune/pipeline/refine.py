"""Stage 2b: NetAdapt-style walks from the best models measured at the budget's edge.

The best-scored models a job times are often a few percent over the budget: the int8
reference (ONNX Runtime's int8 ResNet-20 measured 0.56x-0.66x of the baseline in two
runs on one machine, against a 0.6 budget, and 0.50x against 0.5, then 0.501x when
its final model was timed), or a searcher's best candidate. The nearest
models inside the budget are then a few groups pruned a notch or two more with the same
bit-widths, a region random and model-based samplers rarely hit in a few hundred
candidates (every layer int8, only the cheap-to-lose groups pruned). So, as NetAdapt
(Yang et al., ECCV 2018) does, a walk starts from such a measured model and, step by
step, proposes for every group the least extra pruning that saves a step's worth of
latency, scores the proposals, and keeps the one that loses least score per millisecond
saved, until the estimate is 3% inside the budget; that model is timed paired, and a
miss continues the walk from its measurement. A start within the budget by less than
that is walked from too: its end point is the fallback the final stage takes if the
start's final model lands over the budget.

Latency is estimated from the walk's measured start: its measurement times the
predictor's relative change (``Screen.raw_ms``), which errs far less near a measured
model than the predictor's absolute figure does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from slimtune.measurement.budget import Budget
from slimtune.measurement.paired import PairedTimings
from slimtune.measurement.screening import Screen
from slimtune.pipeline.measure import measure_candidate
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.spaces import SearchSpace
from slimtune.trial import TrialContext

#: the ``searcher`` of a walk's rows
REFINE = "refine"
#: a walk aims this far inside the budget (paired timings of one model move ~3%)
AIM = 0.97
#: steps per timing: each proposal saves at least 1/STEPS of the way to the aim
STEPS = 3
#: steps a walk takes in all, and paired timings of its end points
MAX_STEPS = 12
MAX_TIMINGS = 3
#: how far over the budget a start may be: further, the walk would prune so much that the
#: score is gone, and the predictor's relative change is no longer near its measurement
#: (from int8 at 0.63x to a 0.5 budget, 12 steps took the score from 0.85 to 0.18, and the
#: end point measured 0.66x: pruned int8 convolutions ran slower, not faster)
REACH = 1.15


def walk_starts(rows: Sequence[TrialResult], budget_ms: float, walks: int) -> list[TrialResult]:
    """The ``walks`` best-scored measured rows at the budget's edge (over it by at most
    ``REACH``, or within it by less than ``AIM`` leaves: another timing may turn them)
    that outscore every measured row securely within it (pruning further rarely raises a
    score), one per policy."""
    measured = [r for r in rows if r.stage == "measured" and r.score is not None]
    best_secure = best_secure_score(measured, budget_ms)
    starts: dict[str, TrialResult] = {}
    for row in sorted(measured, key=lambda r: -(r.score or 0.0)):
        near = (row.latency_ms or float("inf")) <= budget_ms * REACH
        if near and not _secure(row, budget_ms) and (row.score or 0.0) > best_secure:
            starts.setdefault(row.policy.key(), row)
    return list(starts.values())[:walks]


def _secure(row: TrialResult, budget_ms: float) -> bool:
    """Within the budget by at least what ``AIM`` leaves: another timing will not turn it."""
    return row.feasible and (row.latency_ms or float("inf")) <= budget_ms * AIM


def best_secure_score(rows: Sequence[TrialResult], budget_ms: float) -> float:
    """The best score of the measured rows within ``AIM`` of the budget (-inf if none)."""
    return max((r.score or 0.0 for r in rows if r.stage == "measured" and r.score is not None
                and _secure(r, budget_ms)),
               default=float("-inf"))


def rescue_start(finals: Sequence[TrialResult], budget_ms: float,
                 walked: Collection[str] = ()) -> TrialResult | None:
    """The final model to walk a notch further: the most accurate (validation) final row
    over the budget by at most ``REACH`` that is more accurate than every final row
    within it, not of a policy in ``walked`` (keys walked from already), or None.

    A final model's own timing can land a model measured inside the budget just over it
    (a walk's end measured 0.56x of the baseline, and its final model pooled 0.611x
    against a 0.6 budget); handing out the next model within the budget then gives away
    what that model had over it (uniform pruning at 0.78 beside int8 at 0.84 in one
    quickstart)."""
    done = [r for r in finals if r.stage == "final" and r.state != "failed"
            and r.accuracy is not None and r.latency_ms is not None]
    best_within = max((r.accuracy or 0.0 for r in done if r.feasible), default=float("-inf"))
    over = [r for r in done if not r.feasible and (r.latency_ms or 0.0) <= budget_ms * REACH
            and (r.accuracy or 0.0) > best_within and r.policy.key() not in walked]
    return max(over, key=lambda r: (r.accuracy or 0.0, -(r.latency_ms or 0.0)), default=None)


def proposals(space: SearchSpace, policy: Policy, estimate: Callable[[Policy], float],
              saving_ms: float) -> list[Policy]:
    """For each group that can be pruned further, ``policy`` with that group pruned the
    fewest notches that save ``saving_ms`` by ``estimate`` (its most, if none does), the
    other groups and every bit-width as they are. Proposals that save nothing are left
    out."""
    now = estimate(policy)
    out = []
    for group, choices in space.ratios.items():
        more = sorted(c for c in choices if c > policy.ratio(group))
        pick = None
        for ratio in more:
            pick = replace(policy, prune={**policy.prune, group: ratio})
            if now - estimate(pick) >= saving_ms:
                break
        if pick is not None and estimate(pick) < now:
            out.append(pick)
    return out


def refine_walks(ctx: TrialContext, space: SearchSpace, screen: Screen, pool: Any,
                 starts: Sequence[TrialResult], *, baseline: Any, budget: Budget,
                 timings: PairedTimings, first_id: int,
                 on_row: Callable[[TrialResult], None],
                 floor: float = float("-inf"),
                 why: list[str] | None = None) -> list[TrialResult]:
    """Walk from each of ``starts`` (measured rows at the budget's edge, with scores) to
    ``AIM`` of the budget; every proposal is a ``scored`` row (``searcher: refine``), every
    end point a ``measured`` one. A walk whose score falls below ``floor`` (the best score
    securely within the budget) stops untimed: it cannot beat what is already there.
    Returns the measured rows; ``why``, if given, gets how each walk ended."""
    next_id = first_id
    measured: list[TrialResult] = []
    for start in starts:
        here, here_ms, score = start.policy, start.latency_ms or 0.0, start.score or 0.0
        steps, ended = 0, f"#{start.trial_id}: {MAX_TIMINGS} timings"
        for _ in range(MAX_TIMINGS):
            if here_ms <= 0 or steps >= MAX_STEPS:
                ended = f"#{start.trial_id}: {MAX_STEPS} steps"
                break
            raw_here = max(screen.raw_ms(here), 1e-9)

            def estimate(p: Policy, anchor_ms: float = here_ms, raw: float = raw_here) -> float:
                return anchor_ms * screen.raw_ms(p) / raw

            aim = budget.ms * AIM
            saving = max((estimate(here) - aim) / STEPS, 0.0)
            policy, row = here, None
            while estimate(policy) > aim and steps < MAX_STEPS:
                options = proposals(space, policy, estimate, saving)
                if not options:
                    ended = f"#{start.trial_id}: no pruning saves latency after {steps} steps"
                    break
                scores = pool.score(options)
                rows = []
                for option, option_score in zip(options, scores, strict=True):
                    rows.append(TrialResult(
                        trial_id=next_id, policy=option, state="ok", stage="scored",
                        score=option_score, predicted_latency_ms=estimate(option),
                        budget_ms=budget.ms, searcher=REFINE))
                    next_id += 1
                    on_row(rows[-1])
                now = estimate(policy)
                row = max(rows, key=lambda r: ((r.score or 0.0) - score)
                          / max(now - (r.predicted_latency_ms or now), 1e-9))
                policy, score = row.policy, row.score or 0.0
                steps += 1
                if score < floor:
                    ended = (f"#{start.trial_id}: score {score:.3f} under the best within "
                             f"the budget ({floor:.3f}) after {steps} steps")
                    row = None
                    break
            if row is None or estimate(policy) > aim:
                if steps >= MAX_STEPS and row is not None:
                    ended = f"#{start.trial_id}: {MAX_STEPS} steps"
                break  # the budget is out of this walk's reach
            done = measure_candidate(ctx, row, baseline, budget, timings)
            screen.record(policy, done.latency_ms or 0.0)
            on_row(done)
            measured.append(done)
            if done.feasible:
                ended = f"#{start.trial_id}: #{done.trial_id} within the budget"
                break
            here, here_ms = policy, done.latency_ms or 0.0
        if why is not None:
            why.append(ended)
    return measured
