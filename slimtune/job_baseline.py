"""A job's baseline stage: the trained baseline deployed, timed, evaluated; the budget set.

Its figures are one typed value (:class:`BaselineFigures`) from here to the outputs:
``pareto.json``'s ``baseline``, the parent MLflow run's ``baseline_*`` metrics and the
resume state all hold its :meth:`BaselineFigures.to_dict`, whose keys are a contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.baseline import Baseline, prepare_baseline
from slimtune.chance import check_above_chance, vanishing_norms
from slimtune.evaluate.trial_eval import job_reference
from slimtune.measurement.budget import Budget
from slimtune.measurement.latency import MeasureProtocol, machine_lock
from slimtune.objective import Objective, evaluate_split
from slimtune.policy import Policy
from slimtune.preflight import Prepared, budget_ms, print_line
from slimtune.trial import PairedWith, TrialContext, deploy, measure


@dataclass(frozen=True)
class BaselineFigures:
    """The deployed baseline's figures, and the budget they set."""

    accuracy: float
    test_accuracy: float
    latency_ms: float
    latency_p10_ms: float
    latency_p90_ms: float
    size_bytes: int
    macs: int
    params: int
    source: str
    train_seconds: float
    cache_key: str
    budget_ms: float = float("nan")
    fastest_ms: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)  # the behaviour metric groups

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.metrics:
            out.pop("metrics")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineFigures:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class MeasuredBaseline:
    """What the baseline stage hands the search: the model, the trial context (budget
    set) and the figures."""

    baseline: Baseline
    ctx: TrialContext
    figures: BaselineFigures


def baseline_stage(prep: Prepared, out_dir: Path, protocol: MeasureProtocol,
                   resumed: dict[str, Any] | None) -> MeasuredBaseline:
    """Train or load the baseline, measure it into ``out_dir/baseline`` (a resumed job
    keeps the figures it had, ``resumed``), set the budget and the metric reference."""
    spec = prep.spec
    print_line(f"baseline {spec.model.describe()} on {spec.data.describe()}: preparing")
    with machine_lock("shared"):
        baseline = prepare_baseline(spec, prep.data)
    ctx = TrialContext(spec=spec, table=prep.table, baseline_state=baseline.model.state_dict(),
                       data=prep.data, budget_ms=float("inf"), trials_dir=out_dir / "trials",
                       protocol=protocol)
    figures = BaselineFigures.from_dict(resumed) if resumed else \
        measure_baseline(ctx, baseline, out_dir / "baseline")
    budget = budget_ms(spec, figures.latency_ms)
    figures = replace(figures, budget_ms=budget, fastest_ms=prep.fastest_ms)
    # the baseline as deployed, the pair of every timing a trial makes (a fine-tuning
    # trial's gate and final timing; the scoring pipeline pairs its own the same way)
    pair = out_dir / "baseline" / "model.onnx" if spec.target.backend.takes_onnx \
        else baseline.model
    ctx = replace(ctx, budget_ms=budget, paired=PairedWith(pair, Budget(
        ms=budget, fraction=spec.budget.latency_fraction, baseline_ms=figures.latency_ms)))
    if spec.metric_groups:
        with machine_lock("shared"):
            reference = job_reference(ctx, baseline.model, out_dir / "baseline")
        ctx = replace(ctx, reference=reference)
        figures = replace(figures, metrics=dict(reference.metrics))
    print_line(f"baseline ({baseline.source}): val accuracy {figures.accuracy:.4f}, "
               f"{figures.latency_ms:.3f} ms on {spec.target.runtime}; budget {budget:.3f} ms")
    return MeasuredBaseline(baseline, ctx, figures)


def measure_baseline(ctx: TrialContext, baseline: Baseline, out: Path) -> BaselineFigures:
    """Deploy the baseline into ``out``, time it on the target, evaluate val and test
    (a baseline at chance level costs a warning, or the job: see slimtune.chance)."""
    from slimtune.compress import count_macs_params, packed_size_bytes

    out.mkdir(parents=True, exist_ok=True)
    with machine_lock("shared"):
        deployed = deploy(ctx, baseline.model, Policy(), out / "model.onnx")
    stats = measure(ctx, deployed)
    threads = ctx.spec.target.threads
    with machine_lock("shared"):
        run, objective = deployed.runner(threads), Objective.of(ctx.spec)
        val, _ = evaluate_split(objective, run, ctx.data.val)
        test, _ = evaluate_split(objective, run, ctx.data.test)
        check_chance = objective.logits and not ctx.spec.baseline.allow_chance
        val_logits = deployed.logits(ctx.data.val, threads) if check_chance else None
    if val_logits is not None:
        warning = check_above_chance(np.asarray(val_logits), ctx.data.val.y.numpy(),
                                     ctx.data.num_classes, source=baseline.source,
                                     hint=vanishing_norms(baseline.model))
        if warning:
            print_line(f"warning: {warning}")
    macs, params = count_macs_params(baseline.model, ctx.data.input_shape)
    return BaselineFigures(
        accuracy=val, test_accuracy=test, latency_ms=stats.median_ms,
        latency_p10_ms=stats.p10_ms, latency_p90_ms=stats.p90_ms,
        size_bytes=packed_size_bytes(baseline.model, ctx.table, Policy()), macs=macs,
        params=params, source=baseline.source, train_seconds=baseline.train_seconds,
        cache_key=baseline.cache_key)

