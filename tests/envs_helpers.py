"""A prepared CompressionProblem on the tiny job, shared by the env and agent tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from slimtune.measurement.shapes import ChannelMap
from slimtune.policy import Policy
from slimtune.spec import parse_spec
from tests.jobs import tiny_job


class MacsPredictor:
    """Test double: latency proportional to the conv/linear MACs (no measurement).

    The real predictor (slimtune.measurement.predictor) is measured on the target; the env tests
    only need a deterministic, monotone one to check the wall's logic.
    """

    def __init__(self, channels: ChannelMap, baseline_ms: float) -> None:
        self.channels = channels
        self.full = channels.macs(Policy())
        self.baseline_ms = baseline_ms

    def predict_ms(self, policy: Policy) -> float:
        int8 = sum(1 for b in policy.bits.values() if b <= 8) / len(self.channels.table.layers)
        return self.baseline_ms * self.channels.macs(policy) / self.full * (1 - 0.3 * int8)


def make_problem(tmp: Path, budget_fraction: float = 0.6, **sections):
    from slimtune.envs.problem import prepare_problem

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTUNE_CACHE", str(tmp / "cache"))
        mp.setenv("SLIMTUNE_LOCK_DIR", str(tmp))
        # preflight's budget check measures the tiny net at batch 1, where a loaded machine's
        # noise can exceed the pruning's effect; a loose budget in ms passes it, and the
        # budget under test is set from the measured baseline afterwards
        spec = parse_spec(tiny_job(tmp, budget={"latency_ms": 1e3},
                                   space={"prune_ratios": [0.0, 0.25, 0.5, 0.75], "bits": [32, 8],
                                          "round_to": 1}, **sections))
        holder = {}

        class _Lazy:
            def predict_ms(self, policy: Policy) -> float:
                return holder["p"].predict_ms(policy)

        problem = prepare_problem(spec, predictor=_Lazy())
        holder["p"] = MacsPredictor(problem.channels, problem.baseline_ms)
    return replace(problem, budget_ms=budget_fraction * problem.baseline_ms)
