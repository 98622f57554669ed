"""Paired timings pooled per architecture, and decisions at the budget's edge timed again."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slimtune.measurement.latency import LatencyStats
from slimtune.measurement.paired import PairedLatency, PairedTimings, pooled
from slimtune.pipeline import measure as measure_stage
from slimtune.pipeline.measure import EDGE, MAX_TIMINGS, Budget, settle_the_edge
from slimtune.policy import Policy
from slimtune.result import TrialResult


def _stats(medians: list[float]) -> LatencyStats:
    return LatencyStats(median_ms=sorted(medians)[len(medians) // 2], p10_ms=min(medians),
                        p90_ms=max(medians), mean_ms=sum(medians) / len(medians), cv=0.1,
                        samples=10 * len(medians), rounds=len(medians), runtime="onnxruntime",
                        threads=2, batch_size=64, round_medians_ms=tuple(medians))


def _timing(ratio: float, rounds: int = 3) -> PairedLatency:
    return PairedLatency(ratio, _stats([20.0 * ratio] * rounds), _stats([20.0] * rounds))


def _tiny_search(tmp_path, *, candidates: int, trials: int):
    """A tiny job's context (anchors off, references on, top_k 1), its 2x2 space, the
    space's int8 reference policy and a 0.6 fractional budget of a 10 ms baseline."""
    from slimtune.pipeline.references import int8_reference
    from slimtune.spaces import SearchSpace
    from tests.jobs import tiny_trial_context

    ctx = tiny_trial_context(tmp_path)
    ctx = replace(ctx, spec=ctx.spec.with_sections(
        search={"candidates": candidates, "trials": trials},
        finalize={"top_k": 1, "references": True}, scoring={"anchors": False}))
    space = SearchSpace.from_table(ctx.table, (0.0, 0.5), (32, 8), round_to=1)
    return ctx, space, int8_reference(space), Budget(ms=6.0, fraction=0.6, baseline_ms=10.0)


def _timed_row(row: TrialResult, timings: PairedTimings, budget: Budget,
               ratio: float) -> TrialResult:
    """``row`` measured at ``ratio``, judged on its pooled timings as the job does."""
    paired = timings.add(row.policy.key(), _timing(ratio))
    return replace(row, stage="measured", state="ok" if budget.met(paired) else "infeasible",
                   latency_ratio=paired.ratio, latency_ms=paired.ratio * budget.baseline_ms)


def _run_patched(monkeypatch, ctx, space, budget, measure, finalize, screen=None, **search):
    """``run_scoring_search`` of a random search over ``space`` with ``measure`` and
    ``finalize`` in place of deploying and fine-tuning, scoring in-process."""
    from slimtune.measurement.screening import Screen
    from slimtune.pipeline import refine as refine_stage
    from slimtune.pipeline import run as run_stage
    from slimtune.pipeline.run import ScoringSearch, run_scoring_search
    from slimtune.pipeline.score import LocalPool
    from slimtune.search.random_search import RandomSearcher
    from tests.test_pipeline import _evaluator

    monkeypatch.setattr(run_stage, "measure_candidate", measure)
    monkeypatch.setattr(measure_stage, "measure_candidate", measure)
    monkeypatch.setattr(refine_stage, "measure_candidate", measure)
    monkeypatch.setattr(run_stage, "ScoringPool", lambda ev, workers, cpus: LocalPool(ev))
    monkeypatch.setattr(run_stage, "finalize_in_ray", finalize)
    return run_scoring_search(ScoringSearch(
        ctx=ctx, space=space, searcher=RandomSearcher(space, seed=0, trials=8),
        evaluator=_evaluator(ctx), screen=screen or Screen(lambda p: 1.0, budget_ms=6.0),
        budget=budget, baseline=None, on_row=lambda r: None, **search))


def test_pooled_timings_are_judged_on_all_their_rounds():
    one = _timing(0.50)
    assert pooled([one]) is one
    both = pooled([_timing(0.50), _timing(0.62, rounds=5)])
    assert both.candidate.rounds == both.baseline.rounds == 8
    assert both.candidate.samples == 80
    assert both.ratio == pytest.approx(0.62)  # 5 of the 8 rounds' ratios are 0.62
    assert pooled([_timing(0.50, 3), _timing(0.60, 3), _timing(0.55, 3)]).ratio == \
        pytest.approx(0.55)
    with pytest.raises(ValueError):
        pooled([])
    store = PairedTimings()
    assert store.add("k", _timing(0.5)).ratio == pytest.approx(0.5)
    assert store.add("k", _timing(0.7)).candidate.rounds == 6 and len(store.of("k")) == 2
    assert store.of("other") == ()


def test_the_edge_is_a_band_around_the_budget_on_its_own_figure():
    frac = Budget(ms=12.0, fraction=0.6, baseline_ms=20.0)
    assert frac.near(_timing(0.6 * (1 + EDGE * 0.9)))
    assert frac.near(_timing(0.6 * (1 - EDGE * 0.9)))
    assert not frac.near(_timing(0.6 * (1 - EDGE * 1.1)))
    ms = Budget(ms=10.0, fraction=None, baseline_ms=20.0)
    assert ms.near(_timing(0.52)) and not ms.near(_timing(0.4))  # 10.4 ms vs 8 ms


def test_only_the_decisions_the_final_stage_rests_on_are_timed_again(monkeypatch):
    """Drift put the best candidate at 0.611x of a 0.6 budget: it is timed again and
    admitted on all its rounds; a candidate far from the edge, and one scored below the
    top_k within budget, are not timed again."""
    budget = Budget(ms=12.0, fraction=0.6, baseline_ms=20.0)
    drift = {"best": [0.611, 0.55, 0.56], "safe": [0.40], "later": [0.59, 0.5]}
    names = {}
    store = PairedTimings()

    def row(name: str, score: float, trial_id: int) -> TrialResult:
        policy = Policy(prune={"g": trial_id / 10})
        names[policy.key()] = name
        paired = store.add(policy.key(), _timing(drift[name].pop(0)))
        return TrialResult(trial_id=trial_id, policy=policy, state="ok" if budget.met(paired)
                           else "infeasible", stage="measured", score=score,
                           latency_ratio=paired.ratio)

    def timed_again(ctx, r, baseline, budget_, timings):
        paired = timings.add(r.policy.key(), _timing(drift[names[r.policy.key()]].pop(0)))
        return replace(r, state="ok" if budget_.met(paired) else "infeasible",
                       latency_ratio=paired.ratio)

    monkeypatch.setattr(measure_stage, "measure_candidate", timed_again)
    rows = [row("best", 0.9, 1), row("safe", 0.8, 2), row("later", 0.7, 3)]
    assert not rows[0].feasible
    seen: list[TrialResult] = []
    out = settle_the_edge(None, rows, take=2, baseline=None, budget=budget, timings=store,
                          on_row=seen.append)
    assert [r.trial_id for r in out] == [1, 2, 3]
    assert out[0].feasible and len(store.of(rows[0].policy.key())) == MAX_TIMINGS
    assert [r.trial_id for r in seen] == [1, 1]  # timed twice more, no one else
    assert drift["later"] == [0.5]  # the third was not needed: two were within budget


def test_a_reference_at_the_edge_is_settled_before_the_search_is_screened(tmp_path,
                                                                         monkeypatch):
    """The int8 reference first measures just over the budget, then within it: the
    uniform ladder and the screen (a searched candidate of the same policy) see the
    settled figure before the first candidate is scored."""
    from slimtune.measurement.screening import Screen
    from slimtune.pipeline import run as run_stage
    from slimtune.pipeline.run import ScoringSearch, run_scoring_search
    from slimtune.pipeline.score import LocalPool
    from slimtune.search.random_search import RandomSearcher
    from tests.test_pipeline import _evaluator

    ctx, space, int8, budget = _tiny_search(tmp_path, candidates=4, trials=1)
    first = {"int8": [0.62, 0.55, 0.56]}
    timed: list[str] = []

    def fake_measure(ctx_, row, baseline, budget_, timings=None):
        name = "int8" if row.policy.key() == int8.key() else "other"
        timed.append(name)
        ratio = first[name].pop(0) if first.get(name) else 0.4
        return _timed_row(row, timings, budget_, ratio)

    predicted_when_scoring: list[float] = []
    real_score = run_stage.score_candidates

    def spy_score(searcher, pool, screen, **kw):
        predicted_when_scoring.append(screen.predicted_ms(int8))
        return real_score(searcher, pool, screen, **kw)

    monkeypatch.setattr(run_stage, "measure_candidate", fake_measure)
    monkeypatch.setattr(measure_stage, "measure_candidate", fake_measure)
    monkeypatch.setattr(run_stage, "score_candidates", spy_score)
    monkeypatch.setattr(run_stage, "ScoringPool", lambda ev, workers, cpus: LocalPool(ev))
    monkeypatch.setattr(run_stage, "finalize_in_ray", lambda *a, **k: None)
    s = ScoringSearch(ctx=ctx, space=space, searcher=RandomSearcher(space, seed=0, trials=4),
                      evaluator=_evaluator(ctx), screen=Screen(lambda p: 1.0, budget_ms=6.0),
                      budget=budget, baseline=None, on_row=lambda r: None)
    out = run_scoring_search(s)
    ref = next(r for r in out if r.reference == "int8")
    assert timed[:3] == ["int8"] * 3  # over by drift once, then timed twice more
    assert ref.feasible and ref.latency_ratio == pytest.approx(0.56)
    assert predicted_when_scoring == [pytest.approx(5.6)]  # the settled figure


def test_the_summary_says_when_the_search_found_a_references_policy(tmp_path):
    from slimtune.job import JobOutcome
    from slimtune.results.summary import reference_lines

    int8 = Policy(bits={"conv": 8})

    def final(trial_id: int, policy: Policy, val: float, reference: str | None = None):
        return TrialResult(trial_id=trial_id, policy=policy, state="ok", stage="final",
                           accuracy=val, test_accuracy=val - 0.01, latency_ms=5.0,
                           latency_ratio=0.52, reference=reference)

    rows = [final(1, int8, 0.850), final(9, int8, 0.849, "int8"),
            final(10, Policy(prune={"g": 0.5}), 0.82, "uniform")]
    outcome = JobOutcome(tmp_path, rows, rows, rows[1], {}, 6.0, 0.1, "", "", 1.0, 1.0, 1.0)
    lines = reference_lines(outcome)
    int8_line = next(line for line in lines if "int8 only" in line)
    uniform_line = next(line for line in lines if "uniform" in line)
    assert "+0.10 pp val" in int8_line and "the search's best is this policy" in int8_line
    assert "+3.00 pp val" in uniform_line and "this policy" not in uniform_line
    assert lines[-1] == "  best model: the int8 only reference (#9), the same policy as the " \
        "search's best (#1)"


@pytest.mark.parametrize("own_start", [False, True])
def test_a_reference_the_search_found_is_fine_tuned_once(tmp_path, monkeypatch, own_start):
    """The search's winner is the int8-only policy and both start from the same network
    (bn_recal): one fine-tune, both rows hand out that model (its files under both ids).
    With a start of their own (a supernet search), the reference is fine-tuned itself."""
    from tests.test_pipeline import _evaluator

    ctx, space, int8, budget = _tiny_search(tmp_path, candidates=8, trials=8)

    def fake_measure(ctx_, row, baseline, budget_, timings=None):
        ratio = 0.45 if row.policy.key() == int8.key() else 0.9
        return _timed_row(row, timings, budget_, ratio)

    finalized: list[TrialResult] = []

    def fake_finalize(ctx_, evaluator, rows, baseline, budget_, on_row, **kw):
        for r in rows:
            (ctx_.trials_dir / str(r.trial_id)).mkdir(parents=True)
            (ctx_.trials_dir / str(r.trial_id) / "model.onnx").write_bytes(b"%d" % r.trial_id)
            finalized.append(r)
            on_row(replace(r, stage="final", accuracy=0.8 + r.trial_id / 1000,
                           test_accuracy=0.79))

    out = _run_patched(monkeypatch, ctx, space, budget, fake_measure, fake_finalize,
                       references_start=_evaluator(ctx) if own_start else None)
    winner = next(r for r in out if r.stage == "final" and not r.reference)
    ref = next(r for r in out if r.reference == "int8")
    assert winner.policy.key() == int8.key() and ref.stage == "final"
    if own_start:
        assert ref.model_of is None
        assert sorted(r.trial_id for r in finalized) == [winner.trial_id, ref.trial_id]
        return
    assert [r.trial_id for r in finalized] == [winner.trial_id]
    assert ref.model_of == winner.trial_id and ref.accuracy == winner.accuracy
    assert ref.trial_id != winner.trial_id and ref.score is not None
    assert (ctx.trials_dir / str(ref.trial_id) / "model.onnx").read_bytes() == \
        b"%d" % winner.trial_id


def test_the_summary_says_one_model_serves_the_search_and_its_reference(tmp_path):
    from slimtune.job import JobOutcome
    from slimtune.results.summary import reference_lines

    int8 = Policy(bits={"conv": 8})
    rows = [TrialResult(trial_id=1, policy=int8, state="ok", stage="final", accuracy=0.85,
                        test_accuracy=0.84, latency_ratio=0.52),
            TrialResult(trial_id=5, policy=Policy(prune={"g": 0.5}), state="ok", stage="final",
                        accuracy=0.83, test_accuracy=0.82, latency_ratio=0.45),
            TrialResult(trial_id=9, policy=int8, state="ok", stage="final", accuracy=0.85,
                        test_accuracy=0.84, latency_ratio=0.52, reference="int8", model_of=1),
            TrialResult(trial_id=10, policy=Policy(prune={"g": 0.5}), state="ok",
                        stage="final", accuracy=0.83, test_accuracy=0.82, latency_ratio=0.45,
                        reference="uniform", model_of=5)]
    outcome = JobOutcome(tmp_path, rows, rows, rows[0], {}, 6.0, 0.1, "", "", 1.0, 1.0, 1.0)
    lines = reference_lines(outcome)
    assert lines[1] == (
        "  int8 only        val 0.8500 test 0.8400 at 0.52x of the baseline (#9): the "
        "search's best is this policy, one model fine-tuned once for both")
    assert lines[2] == (
        "  uniform pruning  val 0.8300 test 0.8200 at 0.45x of the baseline (#10) (the "
        "search's #5: one model); search +2.00 pp val, +2.00 pp test")


def test_a_final_timing_at_the_edge_is_timed_again_before_it_stands(monkeypatch):
    """The uniform reference measured 0.52x before its fine-tune and 0.61x after (budget
    0.6): the final figure is a decision too, timed again up to MAX_TIMINGS in all."""
    from types import SimpleNamespace

    from slimtune.pipeline.measure import paired_timing

    ctx = SimpleNamespace(spec=SimpleNamespace(target=None),
                          data=SimpleNamespace(input_shape=(1, 8, 8)))
    deployed = SimpleNamespace(onnx_path="model.onnx", model=None)
    budget = Budget(ms=12.0, fraction=0.6, baseline_ms=20.0)

    def timed(ratios: list[float], earlier: list[float]) -> tuple[int, bool, float]:
        queue = [_timing(r) for r in ratios]
        calls = []
        monkeypatch.setattr(measure_stage, "measure_paired",
                            lambda *a: calls.append(a) or queue.pop(0))
        _stats, ratio, met = paired_timing(ctx, "baseline.onnx", budget,
                                           [_timing(r) for r in earlier])(deployed)
        return len(calls), met, ratio

    calls, met, ratio = timed([0.61, 0.55], earlier=[0.52])
    assert calls == 2 and met and ratio == pytest.approx(0.55)  # 3 timings pooled
    assert timed([0.40], earlier=[])[0] == 1  # far from the edge: one timing stands
    assert timed([0.61], earlier=[0.6] * MAX_TIMINGS)[0] == 1  # its share already spent


def test_a_winner_whose_final_model_lands_over_hands_over_to_the_next_best(tmp_path,
                                                                           monkeypatch):
    """Every searched final model over the budget on its own timing: the next best-scored
    candidate measured within it, of another policy, is finalized too, and is what the
    job has to hand out."""

    ctx, space, _int8, budget = _tiny_search(tmp_path, candidates=8, trials=8)
    ctx = replace(ctx, spec=ctx.spec.with_sections(finalize={"references": False}))

    def fake_measure(ctx_, row, baseline, budget_, timings=None):
        return _timed_row(row, timings, budget_, 0.5)

    calls: list[list[int]] = []

    def fake_finalize(ctx_, evaluator, rows, baseline, budget_, on_row, **kw):
        calls.append([r.trial_id for r in rows])
        over = len(calls) == 1  # the first winner's final model lands over the budget
        for r in rows:
            on_row(replace(r, stage="final", state="infeasible" if over else "ok",
                           accuracy=0.8, test_accuracy=0.79))

    out = {r.trial_id: r for r in _run_patched(monkeypatch, ctx, space, budget, fake_measure,
                                                fake_finalize)}
    assert len(calls) == 2 and len(calls[0]) == len(calls[1]) == 1
    first, second = out[calls[0][0]], out[calls[1][0]]
    assert not first.feasible and second.feasible and second.stage == "final"
    assert second.policy.key() != first.policy.key()
    assert (second.score or 0.0) <= (first.score or 0.0)  # the next best, not a better one


def test_a_final_model_just_over_the_budget_is_walked_a_notch_into_it(tmp_path, monkeypatch):
    """The most accurate final model lands just over the budget on its own timing (every
    first final model does here, at 0.62x against 0.6): the job walks from that timing a
    notch into the budget, times the end and fine-tunes it, and that model, inside the
    budget, is the one to hand out, not a less accurate one further in."""
    from slimtune.measurement.screening import Screen
    from slimtune.pipeline.refine import REFINE
    from slimtune.results.pareto import best_feasible

    ctx, space, int8, budget = _tiny_search(tmp_path, candidates=8, trials=8)
    said: list[str] = []

    def ratio_of(policy: Policy) -> float:
        """int8 at 0.55x, a third less for all of it pruned; any fp32 layer 0.95x."""
        if policy.bits != int8.bits:
            return 0.95
        pruned = sum(policy.prune.values()) / max(len(space.ratios), 1)
        return 0.55 * (1.0 - 0.3 * pruned)

    def fake_measure(ctx_, row, baseline, budget_, timings=None):
        return _timed_row(row, timings, budget_, ratio_of(row.policy))

    finalized: list[TrialResult] = []

    def fake_finalize(ctx_, evaluator, rows, baseline, budget_, on_row, **kw):
        for r in rows:
            finalized.append(r)
            rescued = r.searcher == REFINE
            ratio = ratio_of(r.policy) if rescued else 0.62
            accuracy = 0.85 if r.policy.key() == int8.key() else (0.849 if rescued else 0.8)
            on_row(replace(r, stage="final", state="ok" if ratio <= 0.6 else "infeasible",
                           latency_ratio=ratio, latency_ms=ratio * budget_.baseline_ms,
                           accuracy=accuracy, test_accuracy=accuracy))

    screen = Screen(lambda p: 10.0 * ratio_of(p), budget_ms=6.0)
    out = _run_patched(monkeypatch, ctx, space, budget, fake_measure, fake_finalize,
                       screen=screen, say=said.append)
    finals = [r for r in out if r.stage == "final"]
    rescued = [r for r in finals if r.searcher == REFINE]
    assert len(rescued) == 1 and rescued[0].feasible
    # int8 only (the reference's final model, and the search's if it found it), the most
    # accurate, just over: walked from once
    starts = [r for r in finals if r.policy.key() == int8.key()]
    assert starts and not any(r.feasible for r in starts)
    assert sum(m.startswith("rescue:") for m in said) == 1
    start = next(r for r in starts if f"rescue: #{r.trial_id}'" in " ".join(said))
    # the start's bit-widths, a few groups pruned further
    assert rescued[0].policy.bits == start.policy.bits and any(rescued[0].policy.prune.values())
    assert best_feasible(out).trial_id == rescued[0].trial_id
    assert any(m.startswith(f"rescue: #{start.trial_id}'s final model timed 0.62x")
               and f"walked to #{rescued[0].trial_id}" in m for m in said)
