"""A tiny real job through Ray Tune and MLflow, then export and reload (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from slimtune.cli import main
from slimtune.results.outputs import load_compressed
from tests.jobs import write_job

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {"trial_id", "policy", "accuracy", "latency_ms", "size_bytes", "macs",
                 "params", "feasible", "mlflow_run_id"}


def test_tiny_job_end_to_end(tmp_path, capsys, monkeypatch):
    job = write_job(tmp_path, search={"searcher": "tpe", "trials": 4, "seed": 0})
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # a relative --out must work although Ray workers chdir
    assert main(["run", str(job), "--out", "out"]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed

    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["trial_id"] for r in sorted(rows, key=lambda r: r["trial_id"])] == [0, 1, 2, 3]
    assert all(CONTRACT_KEYS <= set(r) for r in rows)
    feasible = [r for r in rows if r["feasible"]]
    assert feasible, "a 100 ms budget is met by every tiny model"
    for r in feasible:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms"] > 0
        assert r["latency"]["samples"] >= 100 and r["latency"]["p10_ms"] <= r["latency_ms"]

    pareto = json.loads((out / "pareto.json").read_text())
    front_ids = {r["trial_id"] for r in pareto["front"]}
    assert front_ids and front_ids <= {r["trial_id"] for r in feasible}
    assert pareto["baseline"]["latency_ms"] > 0 and 0 < pareto["hypervolume"] <= 1
    for name in ("pareto.png", "job.yaml", "best/policy.json", "best/model.onnx",
                 "best/model.pt"):
        assert (out / name).is_file(), name

    # MLflow: one FINISHED parent, one FINISHED child per trial, artifacts on the parent
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("slimtune.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("slimtune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert {r["mlflow_run_id"] for r in rows} == {c.info.run_id for c in children}
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.png", "pareto.json", "trials.jsonl", "job.yaml"} <= artifacts
    assert "hypervolume" in parents[0].data.metrics

    # export a trial and reload both forms; the ONNX file is the deployed artefact
    trial = min(r["trial_id"] for r in feasible)
    assert main(["export", str(out), "--trial", str(trial), "--out", str(tmp_path / "exp")]) == 0
    model = load_compressed(tmp_path / "exp" / "model.pt")
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert logits.shape == (2, 10)
    assert model(__import__("torch").from_numpy(x)).shape == (2, 10)

    # a second job reuses the cached baseline
    again = write_job(tmp_path, "again.yaml", search={"searcher": "uniform", "trials": 2})
    assert main(["run", str(again), "--out", str(tmp_path / "out2")]) == 0
    assert "baseline (cache)" in capsys.readouterr().err
