"""``task``, ``metric`` and ``loss``: the defaults are the old cross-entropy / KD / top-1,
a user's metric is read batch by batch, a custom task distils outputs by MSE and skips the
behaviour metrics, and a broken metric or loss is one line, exit 2, before any compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from slimtune.cli import main
from slimtune.objective import CLASSIFICATION, Objective, evaluate_split
from slimtune.policy import Policy
from slimtune.spec import parse_spec
from slimtune.split import Split
from slimtune.train import distillation_loss, predict, train
from tests import objectives
from tests.jobs import tiny_job

CUSTOM = {"task": "custom", "metric": "tests.objectives:neg_mse",
          "loss": "tests.objectives:mse", "model": {"import": "tests.objectives:regressor"}}


def custom_job(tmp_path, **overrides) -> dict:
    """A custom regression task: tensor targets from an import, a user's model."""
    job = tiny_job(tmp_path, **CUSTOM, **overrides)
    job["data"] = {"import": "tests.objectives:regression"}
    return job


def test_the_default_objective_is_cross_entropy_and_kd_on_logits() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    labels = torch.arange(8) % 5
    kd = CLASSIFICATION.training_loss(student, labels, teacher, temperature=3.0, alpha=0.6)
    assert torch.equal(kd, distillation_loss(student, teacher, labels, temperature=3.0,
                                             alpha=0.6))
    plain = CLASSIFICATION.training_loss(student, labels, None, temperature=3.0, alpha=0.6)
    assert torch.equal(plain, F.cross_entropy(student, labels))
    custom = Objective("custom", "tests.objectives:neg_mse", "tests.objectives:mse")
    out = custom.training_loss(student, teacher * 2, teacher, temperature=3.0, alpha=0.25)
    expected = 0.25 * F.mse_loss(student, teacher) + 0.75 * F.mse_loss(student, teacher * 2)
    torch.testing.assert_close(out, expected)


def test_a_metric_is_the_mean_over_examples_read_batch_by_batch() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.arange(50) % 4
    model = torch.nn.Linear(4, 4)
    split = Split(x, y, batch_size=8)  # 6 full batches and one of 2
    logits = predict(model, x)
    top1, kept = evaluate_split(CLASSIFICATION, model, split)
    assert top1 == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    # One pass over 50 rows and seven of at most 8 take different BLAS kernels on some
    # CPUs (CI's AMD EPYC differed in the last bits), so the rows are compared to float
    # precision, not bit for bit.
    torch.testing.assert_close(kept, logits, rtol=1e-5, atol=1e-6)
    top2, _ = evaluate_split(Objective(metric="tests.objectives:top2"), model, split)
    assert top2 == pytest.approx(float(objectives.top2(logits, y).mean()))
    assert top2 >= top1
    scalar, _ = evaluate_split(Objective(metric="tests.objectives:mean_top1"), model, split)
    assert scalar == pytest.approx(top1)


def test_spec_keys_of_the_task(tmp_path) -> None:
    spec = parse_spec(tiny_job(tmp_path))
    assert (spec.task, spec.metric, spec.loss) == ("classification", None, None)
    assert spec.metric_groups
    custom = parse_spec(custom_job(tmp_path))
    assert custom.task == "custom" and custom.metric_groups == ()
    for overrides, fragment in (
            ({"task": "custom", "metric": "tests.objectives:neg_mse"}, "needs loss"),
            ({**CUSTOM, "search": {"evaluator": "supernet"}}, "supernet distils"),
            ({**CUSTOM, "constraints": {"ece": 0.1}}, "need class logits"),
            ({"task": "detection"}, "task")):
        with pytest.raises(ValueError, match=fragment):
            parse_spec(tiny_job(tmp_path, **overrides))


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"metric": "tests.objectives:says_good"}, "returned a str"),
    ({"metric": "tests.objectives:nan_metric"}, "not a finite number"),
    ({"metric": "tests.objectives:per_vector"}, "one score per example (2)"),
    ({"metric": "tests.objectives:no_such_fn"}, "metric"),
    ({"metric": "no_such_package.mod:fn"}, "cannot import module"),
    ({"metric": "tests.objectives:NOT_CALLABLE"}, "is not callable"),
    ({"loss": "tests.objectives:vector_loss"}, "finite scalar tensor"),
    ({"metric": "top5"}, "not of the form"),
])
def test_a_broken_metric_or_loss_is_one_line_before_compute(tmp_path, capsys, overrides,
                                                            fragment) -> None:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(tiny_job(tmp_path, **overrides)))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "mlruns.db").exists()


def test_run_refuses_a_metric_returning_a_string_with_nothing_written(tmp_path, capsys):
    job = tiny_job(tmp_path, metric="tests.objectives:says_good")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "metric 'tests.objectives:says_good' returned a str" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns.db").exists()


def test_a_custom_regression_task_validates_trains_and_runs_a_trial(tmp_path, capsys) -> None:
    from slimtune.measurement.latency import MeasureProtocol
    from slimtune.trial import TrialContext, run_trial
    from slimtune.validate import check_inputs

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(custom_job(tmp_path)))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "targets of 3 values" in out
    assert "task custom: the behaviour metrics" in err and "skipped" in err
    spec = parse_spec(custom_job(tmp_path))
    checked = check_inputs(spec)
    data, model = checked.data, checked.model
    assert not data.train.has_labels and data.num_classes == 3
    objective = Objective.of(spec)
    before, _ = evaluate_split(objective, lambda x: predict(model, x), data.val)
    train(model, data.train, steps=60, batch_size=16, lr=0.02, objective=objective)
    after, logits = evaluate_split(objective, lambda x: predict(model, x), data.val)
    assert logits is None and after > before  # minus the MSE went up: the loss was used
    ctx = TrialContext(spec=spec, table=checked.table, baseline_state=model.state_dict(),
                       data=data, budget_ms=100.0, trials_dir=tmp_path / "trials",
                       protocol=MeasureProtocol(warmup=2, rounds=2, repeats=5))
    group = checked.table.groups[0].name
    result = run_trial(ctx, 1, Policy(prune={group: 0.25}), "test")
    assert result.state == "ok", result.error
    assert result.accuracy < 0 and result.metrics == {}  # neg_mse; no behaviour metrics


def test_a_scoring_evaluator_scores_by_the_metric(tmp_path) -> None:
    from slimtune.evaluators.bn_recal import BNRecalEvaluator, ScoreSettings
    from tests.jobs import tiny_trial_context

    ctx = tiny_trial_context(tmp_path)
    settings = ScoreSettings(recal_batches=2, batch_size=32, val_size=64)
    scores = {}
    for name, objective in (("top1", CLASSIFICATION),
                            ("top2", Objective(metric="tests.objectives:top2"))):
        evaluator = BNRecalEvaluator(ctx.baseline_model(), ctx.table, ctx.data.train,
                                     ctx.data.val, settings=settings, threads=1,
                                     objective=objective)
        policy = Policy(prune={ctx.table.groups[0].name: 0.5})
        scores[name] = evaluator.score(policy)
        model, val = evaluator.model(policy), ctx.data.val.first(64)
        expected, _ = evaluate_split(objective, lambda x, m=model: predict(m, x), val)
        assert scores[name] == pytest.approx(expected)
    assert scores["top2"] >= scores["top1"]


@pytest.mark.slow
def test_a_custom_task_job_end_to_end(tmp_path, capsys) -> None:
    """A regression with the user's metric and loss through Ray trials and the outputs."""
    import json

    job = custom_job(tmp_path, search={"searcher": "random", "trials": 2, "seed": 0,
                                       "evaluator": "finetune"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err and "Pareto front" in out
    rows = [json.loads(line) for line in (tmp_path / "out" / "trials.jsonl").open()]
    done = [r for r in rows if r["state"] in ("ok", "infeasible") and r.get("accuracy")]
    assert done and all(r["accuracy"] < 0 for r in done)  # minus the MSE
    assert all(not r.get("metrics") for r in done)
