"""Behaviour metrics wired in: the spec, a trial, the searchers, the front, the report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from slimtune.cli import main
from slimtune.data import load_dataset
from slimtune.errors import SpecError
from slimtune.evaluate import GROUPS, METRIC_KEYS
from slimtune.evaluate.trial_eval import job_reference
from slimtune.layers import build_layer_table
from slimtune.measurement.latency import MeasureProtocol
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.outputs import append_trial, write_json
from slimtune.results.pareto import pareto_front
from slimtune.spec import parse_spec
from slimtune.trial import TrialContext, deploy, run_trial
from tests.jobs import tiny_job, write_job

FAST = MeasureProtocol(warmup=2, rounds=2, repeats=10)
ALL = list(GROUPS)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TrialContext:
    tmp = tmp_path_factory.mktemp("behaviour")
    spec = parse_spec(tiny_job(tmp, evaluate=ALL))
    data = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, data.input_shape, round_to=1)
    ctx = TrialContext(spec=spec, table=table, baseline_state=model.state_dict(), data=data,
                       budget_ms=100.0, trials_dir=tmp / "trials", protocol=FAST)
    base_dir = tmp / "baseline"
    base_dir.mkdir()
    deploy(ctx, ctx.baseline_model(), Policy(), base_dir / "model.onnx")
    return replace(ctx, reference=job_reference(ctx, ctx.baseline_model(), base_dir))


def with_constraints(ctx: TrialContext, **bounds: float) -> TrialContext:
    return replace(ctx, spec=ctx.spec.model_copy(update={"constraints": bounds}))


# --- spec --------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    ({"evaluate": ["per_class", "fairness"]},
     "evaluate: unknown metric group 'fairness'; valid: per_class, agreement, calibration, "
     "privacy, robustness, saliency"),
    ({"constraints": {"worst_class_drop": 1.0}}, "constraints: unknown constraint "
     "'worst_class_drop'; valid: accuracy, worst_class_accuracy, worst_class_drop_pp"),
    ({"constraints": {"ece": -0.05}}, "constraints: ece: bound -0.05 is out of range (ece must "
     "stay <= its bound, a number in [0, 1])"),
    ({"constraints": {"agreement": 97}}, "agreement: bound 97 is out of range"),
    ({"constraints": {"worst_class_drop_pp": -1}}, "worst_class_drop_pp: bound -1 is out of"),
    ({"objectives": ["accuracy", "robustness"]}, "objectives: unknown objective 'robustness'"),
])
def test_bad_metric_input_is_one_line_exit_2(tmp_path, capsys, overrides, message):
    job = write_job(tmp_path, **overrides)
    with pytest.raises(SpecError, match="^"):
        parse_spec(yaml.safe_load(job.read_text()))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_constraints_and_objectives_turn_their_groups_on(tmp_path):
    spec = parse_spec(tiny_job(tmp_path, evaluate=["per_class"], constraints={"ece": 0.1},
                               objectives=["accuracy", "fgsm_accuracy"]))
    assert spec.metric_groups == ("per_class", "calibration", "robustness")
    assert parse_spec(tiny_job(tmp_path)).metric_groups == (
        "per_class", "agreement", "calibration", "privacy")


# --- trial -------------------------------------------------------------------------------

def test_a_trial_reports_every_metric_in_its_row(ctx):
    group = ctx.table.groups[0].name
    policy = Policy(prune={group: 0.5}, bits={ctx.table.layers[0].name: 8})
    result = run_trial(ctx, 1, policy, "test")
    assert result.state == "ok" and result.violations == (), result.error
    row = result.to_dict()
    assert set(METRIC_KEYS) <= set(row)
    assert len(row["per_class_accuracy"]) == 10 and len(row["reliability_bins"]) == 15
    for key in ("agreement", "ece", "fgsm_accuracy", "pgd_accuracy", "noise_accuracy",
                "mia_advantage", "exemplar_accuracy"):
        assert 0.0 <= row[key] <= 1.0, key
    assert -1.0 <= row["saliency_rank_corr"] <= 1.0
    assert row["pgd_accuracy"] <= row["robust_clean_accuracy"]
    assert np.load(ctx.trials_dir / "1" / "saliency.npy").shape == (8, 16, 16)
    # the baseline against itself
    ref = ctx.reference.metrics
    assert ref["agreement"] == 1.0 and ref["worst_class_drop_pp"] == 0.0
    assert ref["saliency_rank_corr"] == pytest.approx(1.0)


def test_a_violated_constraint_makes_the_trial_infeasible(ctx):
    strict = with_constraints(ctx, ece=0.0, agreement=0.0)  # any real ECE is above 0
    result = run_trial(strict, 2, Policy(), "test")
    assert result.state == "infeasible" and not result.feasible
    assert result.violations == ("ece",)
    assert result.accuracy is not None and result.metrics["ece"] > 0  # evaluated, refused
    loose = run_trial(with_constraints(ctx, ece=1.0), 3, Policy(), "test")
    assert loose.state == "ok" and loose.violations == ()
    assert pareto_front([result, loose]) == [loose]


def test_a_trial_over_the_latency_budget_gets_no_metrics(ctx):
    result = run_trial(replace(with_constraints(ctx, ece=1.0), budget_ms=1e-9), 4, Policy(),
                       "test")
    assert result.state == "infeasible" and result.metrics == {} and result.violations == ()


# --- searchers and front -----------------------------------------------------------------

def test_optuna_is_told_each_bound(ctx):
    from slimtune.search import make_searcher
    from slimtune.spaces import SearchSpace

    space = SearchSpace.from_table(ctx.table, (0.0, 0.5), (32, 8), round_to=1)
    searcher = make_searcher("tpe", space, seed=0, trials=4,
                             constraints={"ece": 0.05, "agreement": 0.9})
    for ece, latency in ((0.08, 0.5), (0.01, 0.5), (None, 2.0)):
        policy = searcher.ask()
        metrics = {} if ece is None else {"ece": ece, "agreement": 0.95}
        searcher.tell(policy, TrialResult(trial_id=0, policy=policy, state="ok",
                                          accuracy=0.8, latency_ms=latency, budget_ms=1.0,
                                          metrics=metrics))
    told = [t.system_attrs for t in searcher.study.trials]
    keys = sorted(k for k in told[0] if k.startswith("constraints"))
    assert len(keys) == 3  # latency, ece, agreement
    values = [[attrs[k] for k in keys] for attrs in told]
    # keys sort as agreement, ece, latency_over_budget_ms
    assert values[0] == pytest.approx([-0.05, 0.03, -0.5])
    assert values[1] == pytest.approx([-0.05, -0.04, -0.5])
    assert values[2] == pytest.approx([0.0, 0.0, 1.0])  # stopped at the gate: latency only


def test_objectives_put_a_metric_on_the_front():
    def r(i, acc, lat, fgsm):
        return TrialResult(trial_id=i, policy=Policy(), state="ok", accuracy=acc,
                           latency_ms=lat, size_bytes=10, metrics={"fgsm_accuracy": fgsm})

    trials = [r(0, 0.90, 1.0, 0.2), r(1, 0.85, 1.0, 0.5), r(2, 0.80, 1.0, 0.4)]
    assert [t.trial_id for t in pareto_front(trials)] == [0]
    front = pareto_front(trials, ("accuracy", "latency_ms", "fgsm_accuracy"))
    assert sorted(t.trial_id for t in front) == [0, 1]  # 2 is beaten by 1 on both


# --- report ------------------------------------------------------------------------------

def test_the_report_builds_from_an_output_directory(ctx, tmp_path, capsys):
    out = ctx.trials_dir.parent
    results = [run_trial(ctx, 5, Policy(), "test"),
               run_trial(with_constraints(ctx, ece=0.0), 6, Policy(), "test")]
    (out / "trials.jsonl").unlink(missing_ok=True)
    for result in results:
        append_trial(out, result)
    (out / "job.yaml").write_text(ctx.spec.to_yaml())
    write_json(out / "pareto.json", {
        "baseline": {"accuracy": 0.1, "latency_ms": 1.0, "metrics": dict(ctx.reference.metrics)},
        "best_trial": 5, "budget_ms": 100.0, "constraints": {"ece": 0.0}})
    assert main(["report", str(out), "--out", str(tmp_path / "r.html"), "--no-mlflow"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("<img src=\"data:image/png;base64,") == 3  # classes, reliability, saliency
    assert "trial 5" in page and "<code>ece</code>" in page and "fgsm_accuracy" in page
    assert main(["report", str(out), "--trial", "6", "--trial", "5",
                 "--out", str(tmp_path / "r2.html"), "--no-mlflow"]) == 0
    assert "trial 6" in (tmp_path / "r2.html").read_text()
    capsys.readouterr()
    assert main(["report", str(out), "--trial", "99", "--out", str(tmp_path / "x.html")]) == 2
    assert "trial 99 has no behaviour metrics" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert json.loads((out / "pareto.json").read_text())["best_trial"] == 5
