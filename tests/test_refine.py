"""The NetAdapt-style walks into the budget (slimtune/pipeline/refine.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

import slimtune.pipeline.refine as refine
from slimtune.layers import build_layer_table
from slimtune.measurement.screening import Screen
from slimtune.models import build_builtin
from slimtune.pipeline.measure import Budget
from slimtune.pipeline.refine import proposals, refine_walks, rescue_start, walk_starts
from slimtune.pipeline.run import _fallbacks
from slimtune.result import TrialResult
from slimtune.spaces import SearchSpace


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = build_builtin("tiny_resnet", 10, 1).eval()
    table = build_layer_table(model, (1, 16, 16))
    return SearchSpace.from_table(table, (0.0, 0.25, 0.5, 0.75), (32, 8))


def latency(policy) -> float:
    """A synthetic target: 10 ms, each group's pruning saving 2 ms per unit of ratio."""
    return 10.0 - 2.0 * sum(policy.prune.values())


def test_proposals_prune_one_group_just_enough(space: SearchSpace) -> None:
    start = space.uniform(0.0, 8)
    out = proposals(space, start, latency, saving_ms=0.9)
    assert len(out) == len(space.ratios)  # every group can be pruned further
    for p in out:
        changed = [g for g in space.ratios if p.ratio(g) != start.ratio(g)]
        assert len(changed) == 1 and p.bits == start.bits
        # 0.25 saves 0.5 ms, 0.5 saves 1.0: the fewest notches that save 0.9
        assert p.ratio(changed[0]) == 0.5
    # a saving no single group reaches: each group at its largest ratio
    assert {max(p.prune.values()) for p in proposals(space, start, latency, 50.0)} == {0.75}
    # a group already at its largest ratio proposes nothing
    full = space.uniform(0.75, 8)
    assert proposals(space, full, latency, 0.1) == []


def test_walks_start_at_the_edge_above_every_model_securely_within(space) -> None:
    def row(i, score, ms, stage="measured", policy=None):
        return TrialResult(trial_id=i, policy=policy or space.uniform(0.25 * (i % 4), 32),
                           state="ok" if ms <= 10.0 else "infeasible", stage=stage,
                           score=score, latency_ms=ms)

    rows = [row(0, 0.9, 11.0), row(1, 0.7, 9.0), row(2, 0.8, 10.5), row(3, 0.6, 12.0),
            row(4, 0.95, 11.0, stage="scored"),
            row(5, 0.85, 11.0, policy=space.uniform(0.0, 32)),  # #0's policy again
            row(6, 0.75, 9.9, policy=space.uniform(0.75, 8))]  # within, by < AIM leaves
    assert [r.trial_id for r in walk_starts(rows, 10.0, 5)] == [0, 2, 6]
    assert [r.trial_id for r in walk_starts(rows, 10.0, 1)] == [0]
    assert walk_starts(rows, 10.0, 0) == []
    # too far over (REACH): a walk that long would prune the score away
    assert [r.trial_id for r in walk_starts(
        rows + [row(8, 0.99, 12.0, policy=space.uniform(0.75, 32))], 10.0, 5)] == [0, 2, 6]
    # a model securely within that outscores them: nothing to walk from
    assert walk_starts(rows + [row(7, 0.99, 8.0)], 10.0, 5) == []


def test_the_next_best_is_finalized_when_every_winner_landed_over(space) -> None:
    def row(i, ok, ratio=0.0):
        return TrialResult(trial_id=i, policy=space.uniform(ratio, 8),
                           state="ok" if ok else "infeasible", stage="final")

    winners = [row(1, True)]
    within = [row(1, True), row(2, True), row(3, True, 0.25), row(4, True, 0.5)]
    assert _fallbacks(winners, [row(1, True)], within) == []  # it stayed within
    spare = _fallbacks(winners, [row(1, False)], within)
    # #2 has #1's policy (a model already judged): #3 is next
    assert [r.trial_id for r in spare] == [3]
    assert [r.trial_id for r in _fallbacks(winners + [within[2]], [row(1, False),
                                           row(3, False)], within)] == [4]
    assert _fallbacks([], [], within) == []


def test_a_rescue_walks_from_the_most_accurate_final_model_just_over(space) -> None:
    def row(i, accuracy, ms, state=None):
        return TrialResult(trial_id=i, policy=space.uniform(0.25 * (i % 4), 8),
                           state=state or ("ok" if ms <= 10.0 else "infeasible"),
                           stage="final", score=0.5, accuracy=accuracy, latency_ms=ms)

    finals = [row(0, 0.80, 9.0), row(1, 0.85, 10.4), row(2, 0.86, 12.0), row(3, 0.84, 10.2)]
    # #2 is too far over (REACH); #1 is the most accurate of the rest, and beats #0 within
    assert rescue_start(finals, 10.0).trial_id == 1
    assert rescue_start(finals, 10.0, walked={finals[1].policy.key()}).trial_id == 3
    # nothing over the budget is more accurate than the best within it
    assert rescue_start(finals + [row(4, 0.9, 8.0)], 10.0) is None
    assert rescue_start([row(5, 0.9, 10.1, state="failed")], 10.0) is None
    assert rescue_start([row(6, 0.7, 10.1)], 10.0).trial_id == 6  # none within at all
    assert rescue_start([], 10.0) is None


class _Pool:
    """Scores: pruning the first group costs nothing, every other group costs a lot."""

    def __init__(self, free: str) -> None:
        self.free, self.scored = free, []

    def score(self, policies):
        self.scored += list(policies)
        return [0.9 - sum(r for g, r in p.prune.items() if g != self.free) for p in policies]


def test_a_walk_prunes_the_cheapest_group_and_retries_from_a_miss(space, monkeypatch) -> None:
    free = next(iter(space.ratios))
    pool = _Pool(free)
    # the target runs 10% slower than the first estimate (the start's figure times the
    # predictor's change): the first end point misses, and the walk goes on from there

    def measure(ctx, row, baseline, budget, timings):
        ms = latency(row.policy) * 1.1
        return replace(row, stage="measured", latency_ms=ms,
                       state="ok" if ms <= budget.ms else "infeasible")

    monkeypatch.setattr(refine, "measure_candidate", measure)
    start = TrialResult(trial_id=7, policy=space.uniform(0.0, 8), state="infeasible",
                        stage="measured", score=0.9, latency_ms=10.0)
    rows, why = [], []
    ends = refine_walks(None, space, Screen(predict_ms=latency, budget_ms=9.7), pool, [start],
                        baseline=None, budget=Budget(ms=9.7, fraction=None, baseline_ms=10.0),
                        timings=None, first_id=100, on_row=rows.append, why=why)
    scored_ids = [r.trial_id for r in rows if r.stage == "scored"]
    assert scored_ids == list(range(100, 100 + len(scored_ids)))  # numbered from first_id
    assert len(pool.scored) == len(scored_ids)
    assert all(r.searcher == refine.REFINE for r in rows)
    # aim 0.97 x 9.7: free at 0.5 is estimated 9.0 and measures 9.9; from there free at
    # 0.75 is estimated 8.5 x 1.1 = 9.35 and measures it
    assert [r.latency_ms for r in ends] == pytest.approx([9.9, 9.35])
    assert ends[-1].feasible
    # every step pruned only the group whose pruning loses no score
    assert all(g == free for g, r in ends[-1].policy.prune.items() if r > 0)
    assert ends[-1].score == pytest.approx(0.9)
    assert len(ends) == 2 and not ends[0].feasible  # a miss, then a walk on from it
    assert [r for r in rows if r.stage == "measured"] == ends
    assert why == [f"#7: #{ends[-1].trial_id} within the budget"]


def test_a_walk_that_falls_below_the_best_secure_score_is_not_timed(space, monkeypatch) -> None:
    def measure(*_args, **_kw):
        raise AssertionError("timed")

    monkeypatch.setattr(refine, "measure_candidate", measure)
    start = TrialResult(trial_id=7, policy=space.uniform(0.0, 8), state="infeasible",
                        stage="measured", score=0.9, latency_ms=10.0)
    rows = []
    # every proposal prunes a group that costs score (none is free)
    ends = refine_walks(None, space, Screen(predict_ms=latency, budget_ms=9.0),
                        _Pool(free=""), [start], baseline=None,
                        budget=Budget(ms=9.0, fraction=None, baseline_ms=10.0), timings=None,
                        first_id=100, on_row=rows.append, floor=0.85, why=(why := []))
    assert ends == [] and rows  # proposals scored, the walk given up before a timing
    assert len(why) == 1 and "under the best within the budget (0.850)" in why[0]
    # a target where pruning saves nothing (int8 here on narrow layers): no proposal at all
    why = []
    assert refine_walks(None, space, Screen(predict_ms=lambda p: 10.0, budget_ms=9.0),
                        _Pool(free=""), [start], baseline=None,
                        budget=Budget(ms=9.0, fraction=None, baseline_ms=10.0), timings=None,
                        first_id=100, on_row=rows.append, why=why) == []
    assert why == ["#7: no pruning saves latency after 0 steps"]
