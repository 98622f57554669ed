"""run_trial on a tiny model: feasible, infeasible (never fine-tuned) and failing policies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from slimtune.measurement.latency import MeasureProtocol
from slimtune.policy import Policy
from slimtune.results.outputs import load_compressed
from slimtune.trial import TrialContext, run_trial
from tests.jobs import tiny_trial_context

FAST = MeasureProtocol(warmup=5, rounds=3, repeats=20)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TrialContext:
    return tiny_trial_context(tmp_path_factory.mktemp("trial"), FAST)


def test_feasible_trial_is_measured_evaluated_and_saved(ctx):
    group = ctx.table.groups[0].name
    policy = Policy(prune={group: 0.5}, bits={ctx.table.layers[0].name: 8})
    result = run_trial(ctx, 7, policy, "test")
    assert result.state == "ok", result.error
    assert 0 <= result.accuracy <= 1 and 0 <= result.test_accuracy <= 1
    assert result.latency_ms == result.latency["median_ms"] > 0
    assert result.macs < ctx.table.macs and result.params < ctx.table.params
    saved = ctx.trials_dir / "7"
    assert Policy.load(saved / "policy.json") == policy
    model = load_compressed(saved / "model.pt")
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


def test_over_budget_stops_before_fine_tuning(ctx):
    tight = replace(ctx, budget_ms=1e-9)
    result = run_trial(tight, 8, Policy(), "test")
    assert result.state == "infeasible" and not result.feasible
    assert result.accuracy is None and result.latency_ms > tight.budget_ms
    assert not (ctx.trials_dir / "8").exists()


def test_an_error_inside_fails_the_trial_not_the_caller(ctx):
    result = run_trial(ctx, 9, Policy(prune={"no.such.group": 0.5}), "test")
    assert result.state == "failed"
    assert "no.such.group" in result.error


def test_torch_target_measures_the_torch_module(ctx):
    spec = ctx.spec.model_copy(update={"target": ctx.spec.target.model_copy(
        update={"runtime": "torch"})})
    torch_ctx = replace(ctx, spec=spec)
    layer = ctx.table.layers[0].name
    result = run_trial(torch_ctx, 10, Policy(bits={layer: 8}), "test")
    assert result.state == "ok", result.error
    assert result.latency["runtime"] == "torch"
    assert (ctx.trials_dir / "10" / "model.onnx").is_file()  # fp32 export for deployment


def test_a_paired_trial_is_judged_on_its_ratio_to_the_baseline(ctx, tmp_path):
    """With ``ctx.paired`` (what a job sets), the gate and the final timing are paired
    with the deployed baseline: a fractional budget is checked on the ratio, and
    ``latency_ms`` is the ratio on the baseline's reference scale."""
    from slimtune.measurement.budget import Budget
    from slimtune.trial import PairedWith, deploy

    pair = deploy(ctx, ctx.baseline_model(), Policy(), tmp_path / "baseline.onnx").onnx_path

    def paired(fraction: float) -> TrialContext:
        return replace(ctx, budget_ms=fraction * 2.0, paired=PairedWith(
            pair, Budget(ms=fraction * 2.0, fraction=fraction, baseline_ms=2.0)))

    # the unpruned model against itself: a ratio about 1, over a 0.01 budget whatever
    # its own ms figure, and the gate says so before any fine-tune
    over = run_trial(paired(0.01), 11, Policy(), "test")
    assert over.state == "infeasible" and over.accuracy is None
    assert 0.5 < over.latency_ratio < 2.0
    assert over.latency_ms == pytest.approx(over.latency_ratio * 2.0)
    assert not (ctx.trials_dir / "11").exists()
    ok = run_trial(paired(100.0), 12, Policy(), "test")
    assert ok.state == "ok" and ok.stage == "final", ok.error
    assert 0.5 < ok.latency_ratio < 2.0
    assert ok.latency_ms == pytest.approx(ok.latency_ratio * 2.0)
