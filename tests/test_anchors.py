"""Latency anchors: uniform policies of each precision timed before the search starts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slimtune.measurement.screening import Screen, precision
from slimtune.pipeline import run as run_stage
from slimtune.pipeline.measure import Budget
from slimtune.pipeline.references import latency_anchors
from slimtune.pipeline.run import ANCHOR, ScoringSearch, run_scoring_search
from slimtune.pipeline.score import LocalPool
from slimtune.policy import Policy
from slimtune.search.random_search import RandomSearcher
from slimtune.spaces import SearchSpace
from tests.jobs import tiny_trial_context
from tests.test_pipeline import _evaluator


def _space(ctx, **kw) -> SearchSpace:
    return SearchSpace.from_table(ctx.table, (0.0, 0.25, 0.5), (32, 8), round_to=1, **kw)


def test_anchors_cover_each_precision_at_the_middle_and_largest_ratio(tmp_path):
    ctx = tiny_trial_context(tmp_path)
    space = _space(ctx)
    anchors = latency_anchors(space)

    def int8_layers(a: Policy) -> int:
        return sum(a.bits_of(n) <= 8 for n in space.bits)

    uniform = [a for a in anchors if int8_layers(a) in (0, len(space.bits))]
    got = {(max(a.prune.values()), 8 if int8_layers(a) else 32) for a in uniform}
    assert got == {(0.25, 32), (0.5, 32), (0.25, 8), (0.5, 8)}
    mixed = [a for a in anchors if a not in uniform]
    assert len(mixed) == 1 and precision(mixed[0]) == "int8"  # int8 and fp32 alternate
    assert int8_layers(mixed[0]) == (len(space.bits) + 1) // 2
    assert len({a.key() for a in anchors}) == len(anchors)
    one_width = _space(ctx, model_bits=True)
    assert len(latency_anchors(one_width)) == 4  # a mixed graph is outside that space
    fp32_only = SearchSpace.from_table(ctx.table, (0.0, 0.5), (32,), round_to=1)
    assert [max(a.prune.values()) for a in latency_anchors(fp32_only)] == [0.5]


def test_anchor_margins_are_the_error_left_after_the_refit():
    """The table predicts int8 layers as fast as fp32; this machine runs them 2x slower.
    A refit on the anchors learns the int8 term, so the margin left is about 1, where
    recording them one by one would have kept the table's cold 2x error as the margin."""
    coef = {"int8": 1.0}
    int8s = [Policy(prune={"g": r}, bits={"conv": 8}) for r in (0.25, 0.5, 0.6)]

    def predict(p: Policy) -> float:
        kept = 10.0 * (1.0 - max(p.prune.values(), default=0.0))
        return kept * (coef["int8"] if p.bits else 1.0)

    def refit(points):
        q = [(p, m) for p, m in points if p.bits]
        if q:
            coef["int8"] = sum(m / (10.0 * (1 - max(p.prune.values()))) for p, m in q) / len(q)

    measured = [(p, 2.0 * predict(p)) for p in int8s]
    screen = Screen(predict, budget_ms=8.0, refit=refit)
    screen.record_anchors(measured)
    assert coef["int8"] == pytest.approx(2.0)
    assert screen.margin("int8") == pytest.approx(1.0)
    assert screen.margin("fp32") == 1.0 and len(screen.measured) == 3
    assert screen.predicted_ms(Policy(prune={"g": 0.5}, bits={"conv": 8})) == \
        pytest.approx(10.0)  # 2 x 5 ms: over the 8 ms budget, where the table said 5 ms
    cold = Screen(predict, budget_ms=8.0)  # no refit: the margin is all it can learn
    coef["int8"] = 1.0
    cold.record_anchors(measured)
    assert cold.margin("int8") == pytest.approx(2.0)


def test_a_scoring_search_times_its_anchors_before_scoring_and_never_finalizes_them(
        tmp_path, monkeypatch):
    ctx = tiny_trial_context(tmp_path)
    ctx = replace(ctx, spec=ctx.spec.with_sections(
        search={"candidates": 6, "trials": 2}, finalize={"top_k": 1, "references": True}))
    space = _space(ctx)
    timed: list[str] = []
    seen_by_scoring: list[int] = []
    finalized: list = []

    def fake_measure(ctx_, row, baseline, budget, timings=None):
        timed.append(row.reference or "candidate")
        ms = 1.0 + sum(row.policy.prune.values())
        return replace(row, stage="measured", state="ok", latency_ms=ms, latency_ratio=0.5)

    real_score = run_stage.score_candidates

    def spy_score(searcher, pool, screen, **kw):
        seen_by_scoring.append(len(screen.measured))
        return real_score(searcher, pool, screen, **kw)

    monkeypatch.setattr(run_stage, "measure_candidate", fake_measure)
    monkeypatch.setattr("slimtune.pipeline.measure.measure_candidate", fake_measure)
    monkeypatch.setattr(run_stage, "score_candidates", spy_score)
    monkeypatch.setattr(run_stage, "ScoringPool",
                        lambda ev, workers, cpus: LocalPool(ev))
    monkeypatch.setattr(run_stage, "finalize_in_ray",
                        lambda ctx_, ev, rows, *a, **k: finalized.extend(rows))
    rows: list = []
    s = ScoringSearch(ctx=ctx, space=space, searcher=RandomSearcher(space, seed=0, trials=6),
                      evaluator=_evaluator(ctx), screen=Screen(lambda p: 1.0, budget_ms=100.0),
                      budget=Budget(ms=100.0, fraction=None, baseline_ms=2.0),
                      baseline=None, on_row=rows.append)
    out = run_scoring_search(s)
    anchors = [r for r in out if r.reference == ANCHOR]
    assert len(anchors) == len(latency_anchors(space)) == 5
    assert timed[:5] == [ANCHOR] * 5  # first, before the references and the candidates
    assert seen_by_scoring == [len(timed) - 2]  # the screen knew every anchor and reference
    assert all(r.stage == "measured" and r.searcher == ANCHOR for r in anchors)
    assert not any(r.reference == ANCHOR for r in finalized)
    assert min(r.trial_id for r in anchors) == 6  # numbered after the candidates
    off = replace(ctx, spec=ctx.spec.with_sections(scoring={"anchors": False}))
    timed.clear()
    run_scoring_search(replace(s, ctx=off, rows={}, screen=Screen(lambda p: 1.0, 100.0),
                               searcher=RandomSearcher(space, seed=0, trials=6)))
    assert ANCHOR not in timed


def test_a_policy_the_job_has_timed_is_predicted_as_measured():
    """The int8 reference measured 0.51x where the margined table said 0.71x: the search's
    candidate with that policy must be screened and ordered by the measurement."""
    int8 = Policy(bits={"conv": 8})
    pruned = Policy(prune={"g": 0.5}, bits={"conv": 8})
    screen = Screen(lambda p: 7.1, budget_ms=6.0)
    screen.record_anchors([(pruned, 14.2)])  # the margin doubles every int8 prediction
    assert screen.predicted_ms(pruned) == pytest.approx(14.2)
    assert not screen.admits(int8)
    screen.record(int8, 5.1, margin=False)  # the reference, timed
    assert screen.predicted_ms(int8) == pytest.approx(5.1) and screen.admits(int8)


def test_a_graph_of_mixed_precision_learns_its_own_margin():
    """The alternating anchor ran 0.8x where all-int8 ran 0.5x: one shared int8 margin
    made every all-int8 candidate look slow. With the space's int8-capable layers known,
    the two are apart."""
    layers = ("a", "b")
    int8 = Policy(bits={"a": 8, "b": 8})
    mixed = Policy(bits={"a": 8})
    assert precision(int8, layers) == "int8" and precision(mixed, layers) == "mixed"
    assert precision(mixed) == "int8"  # without the layers a policy cannot tell
    assert precision(Policy(prune={"g": 0.5}), layers) == "fp32"
    screen = Screen(lambda p: 5.0, budget_ms=6.0, layers=layers)
    screen.record_anchors([(int8, 5.0), (mixed, 9.0)])  # no refit: each its own ratio
    assert screen.margin("int8") == pytest.approx(1.0)
    assert screen.margin("mixed") == pytest.approx(1.8)
    assert screen.admits(int8) and not screen.admits(Policy(bits={"b": 8}))


def test_a_space_with_elastic_depth_gets_anchors_that_drop_blocks():
    """Every other droppable block dropped, at the middle ratio, once per precision: the
    depth classes learn a margin of their own, not the pruned fp32 graphs' (x2 on the
    quickstart, which shut every policy near a 30% budget out of the search)."""
    from slimtune.depth import droppable_blocks
    from slimtune.layers import build_layer_table
    from slimtune.measurement.screening import latency_class
    from slimtune.models import BUILTIN_ARCHS
    from slimtune.spec import SpaceSpec

    model = BUILTIN_ARCHS["resnet20"]().eval()
    table = build_layer_table(model, (1, 28, 28))
    assert droppable_blocks(model, table)
    flat = SearchSpace.for_spec(SpaceSpec(round_to=8, bits_per="model"), table, model)
    deep = SearchSpace.for_spec(SpaceSpec(skip_blocks=True, round_to=8, bits_per="model"),
                                table, model)
    shallow = [a for a in latency_anchors(deep) if a.skip]
    assert len(latency_anchors(deep)) == len(latency_anchors(flat)) + 2
    assert {latency_class(a, tuple(deep.bits)) for a in shallow} == {"fp32+depth",
                                                                      "int8+depth"}
    assert all(a.skip == deep.skip[::2] for a in shallow)
    assert not any(a.skip for a in latency_anchors(flat))

    screen = Screen(lambda p: 4.0 if p.skip else 5.0, budget_ms=6.0)
    pruned, dropped = Policy(prune={"g": 0.5}), Policy(prune={"g": 0.5}, skip=("b",))
    screen.record_anchors([(pruned, 10.0), (dropped, 4.2)])  # no refit: each its own ratio
    assert screen.margin("fp32") == pytest.approx(2.0)
    assert screen.margin("fp32+depth") == pytest.approx(1.05)
    assert screen.admits(Policy(prune={"g": 0.25}, skip=("b",)))
