"""CompressionProblem: everything an episode needs, prepared once per model and job.

The trained baseline, its LayerTable and SearchSpace, the measured baseline latency and
budget, the ChannelMap (layer shapes under any policy) and the latency predictor that
the budget wall consults. Building one trains (or loads the cached) baseline and
measures on the target, so it is shared by every env copy and by searchers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from slimtune.data import Dataset
from slimtune.evaluators.base import Evaluator
from slimtune.layers import LayerTable
from slimtune.measurement.latency import LatencyStats, MeasureProtocol, machine_lock
from slimtune.measurement.shapes import ChannelMap
from slimtune.methods.apply import prune_structure
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec
from slimtune.trial import TrialContext, deploy, measure

# Episodes are measured with fewer samples than trials: the figure gates the reward,
# while every reported result is re-measured by a trial with the full protocol.
EPISODE_PROTOCOL = MeasureProtocol(warmup=5, rounds=3, repeats=20, min_seconds_per_round=0.05)


class LatencyPredictor(Protocol):
    """A policy's latency on the target in milliseconds (slimtune.measurement.predictor)."""

    def predict_ms(self, policy: Policy) -> float: ...


@dataclass(frozen=True)
class CompressionProblem:
    """One model, one job: the fixed part of every episode."""

    spec: JobSpec
    data: Dataset
    table: LayerTable
    space: SearchSpace
    baseline: nn.Module  # trained, eval mode
    baseline_ms: float  # measured on the target
    budget_ms: float
    channels: ChannelMap
    predictor: LatencyPredictor
    # what scores an episode besides the proxy (``env.evaluator``); None: the proxy
    evaluator: Evaluator | None = None

    def trial_context(self, trials_dir: Path = Path(), *,
                      protocol: MeasureProtocol = EPISODE_PROTOCOL) -> TrialContext:
        return TrialContext(spec=self.spec, table=self.table,
                            baseline_state=self.baseline.state_dict(), data=self.data,
                            budget_ms=self.budget_ms, trials_dir=trials_dir, protocol=protocol)

    def measure(self, policy: Policy, protocol: MeasureProtocol = EPISODE_PROTOCOL
                ) -> LatencyStats:
        """Measure ``policy``'s deployed architecture on the target (weights don't matter)."""
        ctx = self.trial_context(protocol=protocol)
        pruned = prune_structure(self.baseline, self.table, policy,
                                 round_to=self.spec.space.round_to)
        with tempfile.TemporaryDirectory(prefix="slimtune-env-") as tmp:
            with machine_lock("shared"):
                deployed = deploy(ctx, pruned, policy, Path(tmp) / "episode.onnx")
            return measure(ctx, deployed)


def prepare_problem(spec: JobSpec, *, predictor: LatencyPredictor | None = None,
                    protocol: MeasureProtocol | None = None,
                    say: Callable[[str], None] = lambda _m: None) -> CompressionProblem:
    """Check the inputs (one-line errors before compute), then train/load and measure."""
    from slimtune.baseline import prepare_baseline
    from slimtune.preflight import budget_ms, preflight

    prep = preflight(spec, protocol)
    with machine_lock("shared"):
        baseline = prepare_baseline(spec, prep.data).model.eval()
    return problem_from_parts(spec, prep.data, prep.table, prep.space, baseline,
                              baseline_ms=prep.baseline_ms,
                              budget_ms=budget_ms(spec, prep.baseline_ms), predictor=predictor,
                              say=say)


def problem_from_parts(spec: JobSpec, data: Dataset, table: LayerTable, space: SearchSpace,
                       baseline: nn.Module, *, baseline_ms: float, budget_ms: float,
                       predictor: LatencyPredictor | None = None,
                       say: Callable[[str], None] = lambda _m: None) -> CompressionProblem:
    """A problem from parts a job already has (``slimtune run`` with ``searcher: ppo``).
    With ``env.evaluator`` other than the proxy, its evaluator is built here (a supernet:
    trained once per baseline and space, then cached)."""
    channels = ChannelMap.probe(baseline, table, round_to=spec.space.round_to)
    if predictor is None:
        from slimtune.measurement.predictor import build_predictor

        predictor = build_predictor(spec, baseline, table)
    evaluator = None
    kind = spec.env.scorer(spec.search.evaluator)
    if kind != "proxy":
        from slimtune.evaluators.factory import build_evaluator

        say(f"episodes scored by the {kind} evaluator: building it")
        evaluator = build_evaluator(kind, spec, baseline.eval(), table, data, space, say,
                                    val_size=spec.env.proxy_val_size,
                                    recal_batches=spec.env.recal_batches)
    return CompressionProblem(spec=spec, data=data, table=table, space=space,
                              baseline=baseline.eval(), baseline_ms=baseline_ms,
                              budget_ms=budget_ms, channels=channels, predictor=predictor,
                              evaluator=evaluator)
