"""A tiny real job with every behaviour metric and a constraint, then the report (slow)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from slimtune.cli import main
from slimtune.evaluate import GROUPS, METRIC_KEYS
from tests.jobs import write_job

pytestmark = pytest.mark.slow


def test_tiny_job_with_behaviour_metrics(tmp_path, capsys):
    # ece <= 0 cannot be met: every fine-tuned trial is infeasible by the constraint
    job = write_job(tmp_path, search={"searcher": "tpe", "trials": 2, "seed": 0},
                    evaluate=list(GROUPS), constraints={"ece": 0.0},
                    objectives=["accuracy", "latency_ms", "fgsm_accuracy"])
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if r["accuracy"] is not None]
    assert evaluated, "a 100 ms budget is met by every tiny model"
    for r in evaluated:
        assert set(METRIC_KEYS) <= set(r)
        assert r["state"] == "infeasible" and r["violations"] == ["ece"] and not r["feasible"]

    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] == [] and pareto["best_trial"] is None
    assert pareto["objectives"] == {"accuracy": "max", "latency_ms": "min",
                                    "fgsm_accuracy": "max"}
    assert pareto["constraints"] == {"ece": 0.0}
    assert pareto["baseline"]["metrics"]["agreement"] == 1.0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    parent = client.get_run(pareto["mlflow_parent_run_id"])
    assert "baseline_ece" in parent.data.metrics
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    child = client.get_run(evaluated[0]["mlflow_run_id"])
    assert child.data.metrics["ece"] == pytest.approx(evaluated[0]["ece"])
    assert "per_class_accuracy.9" in child.data.metrics
    assert child.data.tags["violations"] == "ece"

    # no feasible trial: the report shows the most accurate evaluated one, and attaches
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "again.html")]) == 0
    assert "attached to MLflow run" in capsys.readouterr().out
    assert "again.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
