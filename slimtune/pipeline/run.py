"""The three stages in order, over one job's context (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimtune.errors import UserInputError
from slimtune.evaluators.base import Evaluator
from slimtune.measurement.budget import Budget
from slimtune.measurement.paired import PairedTimings
from slimtune.measurement.screening import Screen, latency_class
from slimtune.pipeline.finalize import finalize_in_ray, shared_final, shared_models
from slimtune.pipeline.measure import measure_candidate, measure_candidates, settle_the_edge
from slimtune.pipeline.rank import ranked
from slimtune.pipeline.references import int8_reference, latency_anchors, uniform_ladder
from slimtune.pipeline.refine import (
    REFINE,
    best_secure_score,
    refine_walks,
    rescue_start,
    walk_starts,
)
from slimtune.pipeline.score import LocalPool, ScoringPool, score_candidates
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace
from slimtune.trial import TrialContext

#: candidates asked and scored per round trip to the scoring actors
SCORE_BATCH = 16
#: uniform ratios tried for the uniform reference before it is given up
UNIFORM_TRIES = 3
REFERENCE = "reference"
#: the ``reference`` label of a latency anchor's row (timed, never fine-tuned)
ANCHOR = "anchor"
#: walks from a final model that landed just over the budget (each one more fine-tune)
RESCUES = 2


@dataclass
class ScoringSearch:
    """One scoring search: its parts, and the rows it produced (latest stage per id)."""

    ctx: TrialContext
    space: SearchSpace
    searcher: Searcher
    evaluator: Evaluator
    screen: Screen
    budget: Budget
    baseline: Any  # the baseline as deployed (.onnx), the pair of every measurement
    on_row: Callable[[TrialResult], None]  # every new or advanced row (trials.jsonl, MLflow)
    # where the references' fine-tune starts (None: ``evaluator``'s network); a supernet
    # search hands them the plainly pruned baseline, as a user pruning by hand has it
    references_start: Evaluator | None = None
    say: Callable[[str], None] = lambda _m: None
    rows: dict[int, TrialResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # every paired timing, by policy: a policy timed again is judged on all its rounds
    paired: PairedTimings = field(default_factory=PairedTimings)

    def record(self, row: TrialResult) -> None:
        self.rows[row.trial_id] = row
        self.on_row(row)


def run_scoring_search(s: ScoringSearch) -> list[TrialResult]:
    """Score ``search.candidates`` policies, time the best ``search.trials``, fine-tune
    the ``finalize.top_k`` best-scored that met the budget, plus the references."""
    spec = s.ctx.spec
    t0 = time.perf_counter()
    examples = s.evaluator.scored_examples  # a score's noise: which scores are level
    pool = ScoringPool(s.evaluator, workers=spec.search.concurrency,
                       cpus=float(spec.target.threads))
    try:
        anchors = _anchor_rows(s, pool, first_id=spec.search.candidates)
        refs = _reference_rows(s, pool, first_id=spec.search.candidates + len(anchors))
        _seed_searcher(s)
        s.timings["references_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        scored = score_candidates(s.searcher, pool, s.screen, count=spec.search.candidates,
                                  first_id=0, batch=SCORE_BATCH * spec.search.concurrency,
                                  on_row=s.record)
        s.timings["score_s"] = time.perf_counter() - t1
        admitted = sum(r.state == "ok" for r in scored)
        s.say(f"scored {admitted} of {len(scored)} candidates ({len(scored) - admitted} "
              f"screened out by predicted latency) in {s.timings['score_s']:.0f} s")
        t2 = time.perf_counter()
        # a candidate with a reference's policy is the search finding that reference: it
        # is timed and finalized as its own row (its own fine-tune seed), not skipped
        measured = measure_candidates(s.ctx, scored, s.screen, count=spec.search.trials,
                                      baseline=s.baseline, budget=s.budget, on_row=s.record,
                                      timings=s.paired, examples=examples)
        measured += _refined(s, pool, measured + [s.rows[r.trial_id] for r in refs])
    finally:
        pool.close()
    # the decisions the final stage rests on, made on more rounds where drift could turn
    # them: the winners-to-be and the references at the budget's edge are timed again
    measured = settle_the_edge(s.ctx, measured, take=spec.finalize.top_k, baseline=s.baseline,
                               budget=s.budget, timings=s.paired, on_row=s.record,
                               screen=s.screen, examples=examples)
    s.timings["measure_s"] = time.perf_counter() - t2
    # best first, those level with the best score (within its noise) largest first
    within = ranked([r for r in measured if r.feasible], examples,
                    lambda r: r.latency_ms or 0.0)
    s.say(f"measured {len(measured)} candidates paired with the baseline: {len(within)} "
          f"within budget (screen margin x{s.screen.correction():.2f})")
    winners = within[:spec.finalize.top_k]
    timed_refs = [r for r in refs if r.feasible and r.stage == "measured"]
    # a reference the search found, from the same start network (bn_recal: both start
    # from the pruned baseline), is one model: fine-tuned once, handed to both rows
    shared = shared_models(winners, timed_refs) if s.references_start is None else {}
    finals = winners + [r for r in timed_refs if r.trial_id not in shared]
    t3 = time.perf_counter()
    s.say(f"finalize: {len(finals)} models fine-tuned "
          f"({len(winners)} searched, {len(finals) - len(winners)} references"
          + "".join(f"; reference #{ref} is #{win}'s policy, fine-tuned once"
                    for ref, win in shared.items()) + ")")
    finalize_in_ray(s.ctx, s.evaluator, finals, s.baseline, s.budget, s.record,
                    references=s.references_start, timings=s.paired)
    spare = _fallbacks(winners, [s.rows[w.trial_id] for w in winners], within)
    if spare:
        s.say("finalize: no searched final model within the budget after its own timing; "
              "next best: " + ", ".join(f"#{r.trial_id}" for r in spare))
        finalize_in_ray(s.ctx, s.evaluator, spare, s.baseline, s.budget, s.record,
                        timings=s.paired)
    for ref, win in shared.items():
        s.record(shared_final(s.ctx, s.rows[win], s.rows[ref]))
    _rescue(s)
    s.timings["finalize_s"] = time.perf_counter() - t3
    return [s.rows[i] for i in sorted(s.rows)]


def _fallbacks(winners: list[TrialResult], done: list[TrialResult],
               within: list[TrialResult]) -> list[TrialResult]:
    """When every searched final model (``done``: the winners' rows after the final
    stage) landed over the budget on its own timing (a winner at the budget's edge), the
    next best-scored measured candidates within it, as many as there were winners, each
    policy once."""
    ids = {w.trial_id for w in winners}
    if not ids or any(r.feasible for r in done if r.trial_id in ids):
        return []
    tried = {w.policy.key() for w in winners}
    spare = [r for r in within if r.trial_id not in ids and r.policy.key() not in tried
             and not tried.add(r.policy.key())]
    return spare[:len(winners)]


def _rescue(s: ScoringSearch) -> None:
    """While the most accurate final model lands just over the budget on its own timing
    (``refine.rescue_start``), walk from that timing a notch into the budget, time the
    end paired and fine-tune it by the same recipe, up to ``RESCUES`` times: the model
    handed out is then the nearest one inside the budget, not the next winner."""
    if not s.ctx.spec.search.refine:
        return
    walked: set[str] = set()
    for _ in range(RESCUES):
        start = rescue_start(list(s.rows.values()), s.budget.ms, walked=walked)
        if start is None:
            return
        walked.add(start.policy.key())
        within = [r for r in s.rows.values() if r.stage == "final" and r.feasible]
        floor = max((r.score or 0.0 for r in within), default=float("-inf"))
        ends = refine_walks(s.ctx, s.space, s.screen, LocalPool(s.evaluator), [start],
                            baseline=s.baseline, budget=s.budget, timings=s.paired,
                            first_id=max(s.rows) + 1, on_row=s.record, floor=floor,
                            why=(why := []))
        end = next((r for r in ends if r.feasible), None)
        s.say(f"rescue: #{start.trial_id}'s final model timed {start.latency_ratio or 0:.2f}x, "
              f"over the budget; " + (f"walked to #{end.trial_id} at "
                                      f"{end.latency_ratio or 0:.2f}x, fine-tuned"
                                      if end is not None else "no model within it: "
                                      + "; ".join(why)))
        if end is None:
            return
        finalize_in_ray(s.ctx, s.evaluator, [end], s.baseline, s.budget, s.record,
                        timings=s.paired)


def _refined(s: ScoringSearch, pool: ScoringPool,
             measured: list[TrialResult]) -> list[TrialResult]:
    """The end points of ``search.refine`` walks (``refine.py``) from the best-scored
    models measured at the budget's edge."""
    starts = walk_starts(measured, s.budget.ms, s.ctx.spec.search.refine)
    if not starts:
        return []
    t = time.perf_counter()
    ends = refine_walks(s.ctx, s.space, s.screen, pool, starts, baseline=s.baseline,
                        budget=s.budget, timings=s.paired, first_id=max(s.rows) + 1,
                        on_row=s.record, floor=best_secure_score(measured, s.budget.ms),
                        why=(why := []))
    s.timings["refine_s"] = time.perf_counter() - t
    walked = sum(r.searcher == REFINE for r in s.rows.values())
    s.say(f"refine: {len(starts)} walks from " + ", ".join(f"#{r.trial_id}" for r in starts)
          + f" (at the budget's edge), {walked} proposals scored, {len(ends)} timed: "
          + (", ".join(f"#{r.trial_id} {r.latency_ratio or 0:.2f}x "
                       + ("within" if r.feasible else "over") for r in ends) or "none")
          + f" ({s.timings['refine_s']:.0f} s; " + "; ".join(why) + ")")
    return ends


def _seed_searcher(s: ScoringSearch) -> None:
    """Put the uniform grid (every ratio, at each bit-width) first in the searcher's
    queue: cheap to score, and it shows a model-based sampler where good policies lie
    before it samples at random. Searchers without a queue (uniform) are left alone."""
    ratios = s.space.all_ratios()
    bits = s.space.all_bits()
    grid = {p.key(): p for p in (s.space.uniform(r, b) for r in ratios for b in bits)}
    for policy in list(grid.values())[:s.ctx.spec.search.candidates // 4]:
        try:
            s.searcher.enqueue(policy)
        except UserInputError:
            return


def _measure_fixed(s: ScoringSearch, pool: ScoringPool, policy: Policy, *, trial_id: int,
                   label: str) -> TrialResult:
    """Score and time ``policy`` whatever the screen predicts (the caller tells the
    screen)."""
    row = TrialResult(trial_id=trial_id, policy=policy, state="ok", stage="scored",
                      score=pool.score([policy])[0],
                      predicted_latency_ms=s.screen.predicted_ms(policy),
                      budget_ms=s.budget.ms, searcher=ANCHOR if label == ANCHOR else REFERENCE,
                      reference=label)
    row = measure_candidate(s.ctx, row, s.baseline, s.budget, s.paired)
    s.record(row)
    return row


def _anchor_rows(s: ScoringSearch, pool: ScoringPool, first_id: int) -> list[TrialResult]:
    """The latency anchors (``scoring.anchors``), timed paired before any candidate is
    scored, so the screen's predictor and each precision's margin are this machine's
    today before the searcher is told a single predicted latency."""
    if not s.ctx.spec.scoring.anchors:
        return []
    anchors = latency_anchors(s.space)
    pool.score(anchors)  # one batch, first: no actor starts up while an anchor is timed
    rows = [_measure_fixed(s, pool, policy, trial_id=first_id + i, label=ANCHOR)
            for i, policy in enumerate(anchors)]
    s.screen.record_anchors([(r.policy, r.latency_ms or 0.0) for r in rows])
    if rows:
        s.say("latency anchors: " + ", ".join(
            f"{_anchor_name(r.policy, s.screen)} {r.latency_ratio or 0:.2f}x" for r in rows)
            + " of the baseline (screen margin " + ", ".join(
                f"{c} x{s.screen.margin(c):.2f}" for c in dict.fromkeys(s.screen.classes))
            + ")")
    return rows


def _anchor_name(policy: Policy, screen: Screen) -> str:
    ratio = max(policy.prune.values(), default=0.0)
    return f"{latency_class(policy, screen.layers)}@{ratio:g}"


def _reference_rows(s: ScoringSearch, pool: ScoringPool, first_id: int) -> list[TrialResult]:
    """The references (int8 only; the mildest uniform ratio that measures within budget),
    scored and measured, numbered after the candidates and anchors."""
    if not s.ctx.spec.finalize.references:
        return []
    rows: list[TrialResult] = []

    def add(policy, label: str) -> TrialResult:
        row = _measure_fixed(s, pool, policy, trial_id=first_id + len(rows), label=label)
        # at the budget's edge it is timed again before the search starts: the uniform
        # ladder, and the screen (for a searched candidate of the same policy), go by
        # the settled figure
        [row] = settle_the_edge(s.ctx, [row], take=1, baseline=s.baseline, budget=s.budget,
                                timings=s.paired, on_row=s.record)
        s.screen.record(policy, row.latency_ms or 0.0, margin=False)
        rows.append(row)
        return row

    int8 = int8_reference(s.space)
    if int8 is not None:
        add(int8, "int8")
    for policy in uniform_ladder(s.space, s.screen)[:UNIFORM_TRIES]:
        if add(policy, "uniform").feasible:
            break
    return rows

