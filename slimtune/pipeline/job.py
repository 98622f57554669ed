"""A job's scoring search: its evaluator, screen and budget built, its rows recorded.

Every row goes to ``trials.jsonl`` as it is produced (a crash loses nothing done);
measured and final candidates are MLflow child runs (a candidate's final figures land
in the run its measurement opened); scored-only candidates go to the parent run as
counts and as the ``candidates.jsonl`` table. At the end ``trials.jsonl`` is rewritten
with one row per candidate, the furthest stage it reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from slimtune.evaluators import Evaluator
from slimtune.evaluators.factory import build_evaluator as make_evaluator
from slimtune.measurement.budget import Budget
from slimtune.measurement.latency import machine_lock
from slimtune.measurement.screening import Screen
from slimtune.pipeline.finalize import finalize_steps
from slimtune.pipeline.measure import MAX_TIMINGS
from slimtune.pipeline.run import ScoringSearch, run_scoring_search
from slimtune.policy import write_text_atomic
from slimtune.progress import ScoringProgress
from slimtune.result import TrialResult
from slimtune.results.outputs import append_trial
from slimtune.results.tracking import Tracker
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace
from slimtune.trial import TrialContext

CANDIDATES_FILE = "candidates.jsonl"


def plain_evaluator(ctx: TrialContext, baseline: nn.Module) -> Evaluator:
    """EagleEye's adaptive-BN evaluator on the plainly pruned baseline (``bn_recal``)."""
    return make_evaluator("bn_recal", ctx.spec, baseline, ctx.table, ctx.data)


def build_evaluator(ctx: TrialContext, baseline: nn.Module, space: SearchSpace,
                    say: Callable[[str], None]) -> Evaluator:
    """The spec's ``search.evaluator`` for this baseline and space."""
    return make_evaluator(ctx.spec.search.evaluator, ctx.spec, baseline, ctx.table, ctx.data,
                          space, say)


def build_screen(ctx: TrialContext, baseline: nn.Module, budget: Budget,
                 say: Callable[[str], None], space: SearchSpace | None = None) -> Screen:
    """The measured per-layer latency predictor (cached per target) behind the screen;
    for a fractional budget it predicts ratios to the baseline, as the budget is checked.
    The layers of ``space`` that may run int8 tell a mixed-precision graph apart."""
    from slimtune.measurement.predictor import build_predictor

    with machine_lock("shared"):
        calib = ctx.data.train.head(ctx.spec.finetune.calibration_size).x.numpy()
    predictor = build_predictor(ctx.spec, baseline, ctx.table, progress=say,
                                calibration_x=calib)
    say(predictor.describe())
    scale = budget.baseline_ms if budget.fraction is not None else None
    int8_capable = () if space is None else tuple(
        n for n, bs in space.bits.items() if min(bs) <= 8)
    return Screen(predictor.predict_ms, budget.ms, refit=predictor.refit, scale_ms=scale,
                  layers=int8_capable)


def scoring_search(ctx: TrialContext, space: SearchSpace, searcher: Searcher,
                   baseline: nn.Module, baseline_ms: float, out_dir: Path,
                   tracker: Tracker, *, say: Callable[[str], None]) -> list[TrialResult]:
    """Run the scoring search of a job whose baseline measured ``baseline_ms``."""
    spec = ctx.spec
    budget = Budget(ms=ctx.budget_ms, fraction=spec.budget.latency_fraction,
                    baseline_ms=float(baseline_ms))
    screen = build_screen(ctx, baseline, budget, say, space)
    say(f"evaluator {spec.search.evaluator}: building")
    evaluator = build_evaluator(ctx, baseline, space, say)
    reference: Any = out_dir / "baseline" / "model.onnx"
    if not spec.target.backend.takes_onnx:
        reference = baseline
    runs: dict[int, str] = {}
    logged: dict[int, int] = {}  # trial id -> the step of its run's latest figures
    progress = ScoringProgress(spec.search.candidates)

    def on_row(row: TrialResult) -> None:
        if row.stage == "scored" and not row.reference:
            progress.update(row)
        row = replace(row, mlflow_run_id=runs.get(row.trial_id, ""))
        if row.stage != "scored" and row.trial_id not in runs:
            params = space.params_from_policy(row.policy)
            runs[row.trial_id] = tracker.start_trial(row.trial_id, params, row.searcher)
            row = replace(row, mlflow_run_id=runs[row.trial_id])
        append_trial(out_dir, row)
        if row.stage != "scored":  # each later figure (a re-timing, the final) a step on:
            # MLflow keys a logged model's metrics by (name, timestamp, step). The final
            # comes after every measured step (at most MAX_TIMINGS), a resumed job's too
            step = logged.get(row.trial_id, -1) + 1
            if row.stage == "final":
                step = max(step, MAX_TIMINGS)
            logged[row.trial_id] = step
            tracker.end_trial(runs[row.trial_id], row, step=step)
            if tracker.degraded:
                tracker.sync()

    search = ScoringSearch(ctx=ctx, space=space, searcher=searcher, evaluator=evaluator,
                           screen=screen, budget=budget, baseline=reference, on_row=on_row,
                           say=say, references_start=None if evaluator.name == "bn_recal"
                           else plain_evaluator(ctx, baseline))
    try:
        rows = run_scoring_search(search)
    finally:
        progress.close()
    rows = [replace(r, mlflow_run_id=runs.get(r.trial_id, "")) for r in rows]
    compact_trials(out_dir, rows)
    _log_parent(tracker, out_dir, rows, search, finalize_steps(spec, len(ctx.data.train)))
    return rows


def compact_trials(out_dir: Path, rows: list[TrialResult]) -> None:
    """``trials.jsonl`` as one row per candidate (its furthest stage), written atomically."""
    text = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rows)
    write_text_atomic(out_dir / "trials.jsonl", text)


def _log_parent(tracker: Tracker, out_dir: Path, rows: list[TrialResult],
                search: ScoringSearch, steps: int) -> None:
    scored = [r for r in rows if r.reference == ""]
    measured = [r for r in rows if r.stage != "scored" and not r.reference]
    path = out_dir / CANDIDATES_FILE
    write_text_atomic(path, "".join(json.dumps(
        {"trial_id": r.trial_id, "stage": r.stage, "state": r.state, "score": r.score,
         "predicted_latency_ms": r.predicted_latency_ms, "latency_ms": r.latency_ms,
         "reference": r.reference, "policy": r.policy.to_dict()}, sort_keys=True) + "\n"
        for r in rows))
    parent = tracker.parent_id
    assert parent is not None
    tracker.log(parent, metrics={
        "candidates_scored": sum(r.score is not None for r in scored),
        "candidates_screened_out": sum(r.score is None for r in scored),
        "candidates_measured": len(measured),
        "candidates_measured_within_budget": sum(r.feasible for r in measured),
        "screen_hit_rate": (sum(r.feasible for r in measured) / len(measured)) if measured
        else 0.0,
        "screen_correction": search.screen.correction(),
        "finalize_steps": steps,
        **{f"stage_{k}": v for k, v in search.timings.items()}})
    tracker.log_artifacts(parent, [path])
