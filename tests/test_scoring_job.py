"""A whole scoring job: scored, measured and final rows, MLflow runs, the best model."""

from __future__ import annotations

import json

import mlflow
import optuna
import pytest

from slimtune.cli import main
from tests.jobs import write_job

SCORING = {"search": {"searcher": "tpe", "evaluator": "bn_recal", "candidates": 10,
                      "trials": 3, "seed": 0},
           "scoring": {"val_size": 64, "recal_batches": 2, "batch_size": 32},
           "finalize": {"top_k": 1, "epochs": 0.05, "max_epochs": 0.1, "batch_size": 32},
           "budget": {"latency_fraction": 0.95}, "evaluate": [],
           "target": {"batch_size": 32}}


# ratios up to 0.75 (three, as many as the tiny job's, for a table of the same size): on
# a ~1 ms model a drift between the calibration and the anchors' timings put every
# 0.25-0.5 policy over the 0.95 budget in one CI run, screening out all ten candidates
SUPERNET = {**SCORING, "search": {**SCORING["search"], "evaluator": "supernet"},
            "supernet": {"steps": 4, "batch_size": 16},
            "space": {"prune_ratios": [0.0, 0.5, 0.75], "bits": [32, 8], "round_to": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("sections", [SCORING, SUPERNET], ids=["bn_recal", "supernet"])
def test_scoring_job_end_to_end(tmp_path, capsys, sections):
    job = write_job(tmp_path, **sections)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids))  # one row per candidate: its furthest stage
    stages = {r["stage"] for r in rows}
    assert "scored" in stages and "final" in stages
    for r in rows:
        if r["stage"] == "scored":
            assert r["accuracy"] is None and r["predicted_latency_ms"] > 0
        if r["stage"] in ("measured", "final"):
            assert r["latency_ratio"] > 0 and r["latency_ms"] > 0
        if r["stage"] == "final":
            assert r["accuracy"] is not None and r["finetune_steps"] >= 1
    refs = {r["reference"] for r in rows if r["reference"]}
    assert "int8" in refs
    pareto = json.loads((out / "pareto.json").read_text())
    best = next(r for r in rows if r["trial_id"] == pareto["best_trial"])
    assert best["stage"] == "final" and best["feasible"]
    assert (out / "best" / "model.onnx").is_file() and (out / "candidates.jsonl").is_file()
    state = json.loads((out / "state.json").read_text())  # the study, kept in memory, saved
    study = optuna.load_study(study_name=state["study_name"],
                              storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) >= 10
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("slimtune.kind") == "trial"]
    timed = [r for r in rows if r["stage"] != "scored"]
    assert len(children) == len(timed)  # every measured and final candidate is a run
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = next(r for r in runs if r.info.run_id == pareto["mlflow_parent_run_id"])
    assert parent.data.metrics["candidates_scored"] >= 1
    captured = capsys.readouterr()
    assert "candidates scored" in captured.out and "int8 only" in captured.out
    assert "not logged to MLflow" not in captured.err  # measured, then final: one run


@pytest.mark.parametrize("section, message", [
    ({"search": {"evaluator": "oneshot"}}, "search.evaluator"),
    ({"finalize": {"top_k": 0}}, "finalize.top_k"),
    ({"finalize": {"epochs": -1}}, "finalize.epochs"),
    ({"finalize": {"epochs": 2, "max_epochs": 1}}, "max_epochs (1) must be at least epochs"),
    ({"finalize": {"min_gain": -0.1}}, "finalize.min_gain"),
    ({"search": {"refine": -1}}, "search.refine"),
])
def test_bad_scoring_settings_are_refused_before_compute(tmp_path, capsys, section, message):
    job = write_job(tmp_path, **section)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_resume_of_a_scoring_job_is_refused_in_one_line(tmp_path, capsys):
    job = write_job(tmp_path, **SCORING)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", str(job), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without --resume" in err[0]
    assert not any(out.iterdir())
