"""Preflight: every check of a job before compute, and the latency bounds it measures.

The inputs (spec, data, model, layer table: :func:`slimtune.validate.check_inputs`), the
job's search space, and the budget against the baseline and the fastest models the space
allows, timed interleaved on the target. One-line errors (exit 2), nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from slimtune.data import Dataset
from slimtune.errors import BudgetError
from slimtune.layers import LayerTable
from slimtune.measurement.latency import LatencyStats, MeasureProtocol
from slimtune.policy import Policy
from slimtune.probe import probed_space
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec
from slimtune.trial import TrialContext
from slimtune.validate import check_inputs

__all__ = ["Prepared", "budget_ms", "preflight", "uses_scoring"]


def print_line(message: str) -> None:
    """What a job says on stderr: ``slimtune: message``."""
    print(f"slimtune: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prepared:
    """What preflight found: data, layer table, space, and the latency bounds it measured."""

    spec: JobSpec
    data: Dataset
    table: LayerTable
    space: SearchSpace
    baseline_ms: float
    fastest_ms: float
    fastest_policy: Policy
    probe_summary: str = ""  # what the group probe checked (said once the job starts)


def uses_scoring(spec: JobSpec) -> bool:
    """True when the job scores candidates (``bn_recal``, ``supernet``) and fine-tunes only
    the winners (slimtune.pipeline), rather than fine-tuning every trial."""
    return spec.search.evaluator != "finetune"


def budget_ms(spec: JobSpec, baseline_ms: float) -> float:
    b = spec.budget
    return b.latency_ms if b.latency_ms is not None else b.latency_fraction * baseline_ms


#: calls per round of the budget check's timing (the default protocol's rounds have 100)
CHECK_REPEATS = 30


def preflight(spec: JobSpec, protocol: MeasureProtocol | None = None, *,
              say: Callable[[str], None] = print_line, reachable: bool = True) -> Prepared:
    """Every check before compute. Raises UserInputError with a one-line message.

    The space is probed (:mod:`slimtune.probe`): every channel group it offers is pruned
    at its largest ratio, exported and run on the target's runtime, and one that fails
    leaves the space with one line (``say``).

    The budget check measures two architectures on the target with untrained weights
    (latency does not depend on the weight values): the baseline, and the smallest
    model the space allows at each bit-width. ``reachable=False`` measures them but refuses
    nothing: the job evaluates given policies (``slimtune apply``), each judged by its own
    timing, not the space's fastest model.
    """
    # the check asks whether the budget is reachable at all, not for a figure a decision
    # rests on: rounds of at most CHECK_REPEATS calls (a third of the default's time)
    protocol = protocol or MeasureProtocol()
    protocol = replace(protocol, repeats=min(protocol.repeats, CHECK_REPEATS))
    checked = check_inputs(spec)
    data, model, table = checked.data, checked.model, checked.table
    space, probe = probed_space(spec, model, table, say)  # says each group it leaves out
    ctx = TrialContext(spec=spec, table=table, baseline_state=model.state_dict(), data=data,
                       budget_ms=float("inf"), trials_dir=Path(), protocol=protocol)
    policies = [Policy(), *space.most_aggressive()]
    # timed interleaved, round by round: a load burst slows the baseline and the fastest
    # models alike instead of deciding the budget check by itself
    measured = _measure_policies(ctx, model, policies)
    baseline_ms = measured[0].median_ms
    fastest = list(zip(measured[1:], policies[1:], strict=True))
    fastest_stats, fastest_policy = min(fastest, key=lambda t: t[0].median_ms)
    fastest_ms = fastest_stats.median_ms
    budget = budget_ms(spec, baseline_ms)
    # refused only when no round of the fastest model fits: a budget within the timing
    # noise of it (a sub-millisecond model) is a search that may still find a model
    if reachable and budget < min(fastest_stats.round_medians_ms, default=fastest_ms):
        raise BudgetError(
            f"budget {budget:.3f} ms is below the fastest model the search space allows "
            f"({fastest_ms:.3f} ms measured on the target; the baseline measures "
            f"{baseline_ms:.3f} ms): raise the budget or allow larger prune ratios")
    return Prepared(spec, data, table, space, baseline_ms, fastest_ms, fastest_policy,
                    probe.summary())


def _measure_policies(ctx: TrialContext, model, policies: list[Policy]) -> list[LatencyStats]:
    """Latency of each policy's architecture, measured interleaved on the target (int8
    calibrated on training examples, as trials are)."""
    from slimtune.measurement.predictor import measure_policies

    calib = ctx.data.train.head(ctx.spec.finetune.calibration_size).x.numpy()
    stats = measure_policies(ctx.spec, model, ctx.table, policies, calibration_x=calib,
                             protocol=ctx.protocol, interleave=True)
    return list(stats)
