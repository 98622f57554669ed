"""The front in MLflow: run tags, the parent's table and chart, the registered model, the
UI links, and the 2-D staircase of the plots. Fake trial rows, a SQLite store, a tiny ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimtune.results.front import TABLE_FILE, job_links, read_links
from slimtune.results.front_html import front_html, hover_text
from slimtune.results.pareto import (
    Reference,
    chart_points,
    front_2d,
    pareto_front,
    plot_pareto,
    policy_summary,
    reference_points,
)
from slimtune.results.tracking import front_filter, runs_url
from slimtune.spec import parse_spec
from tests.front_helpers import INPUT, MIXED, published_job, rows
from tests.jobs import tiny_job


def test_front_2d_staircase_and_size_only_points():
    results = rows()
    front = pareto_front(results)
    assert [r.trial_id for r in front] == [1, 2, 0]
    assert [r.trial_id for r in front_2d(results)] == [1, 0]
    kinds = {p.label: p.kind for p in chart_points(results, front)}
    assert kinds == {"#0": "front", "#1": "front", "#2": "front_other", "#3": "feasible",
                     "#4": "over_budget", "#5": "over_budget"}
    refs = reference_points(results)
    assert [(r.label, r.trial_id) for r in refs] == [("int8 only (#0)", 0),
                                                     ("uniform 50% pruned (#3)", 3)]
    assert policy_summary(MIXED) == "pruned 1/1 groups, mean 25% max 25%; int8 x1, fp32 x1"


def test_png_and_html_draw_every_measured_trial(tmp_path):
    results = rows()
    front = pareto_front(results)
    png = plot_pareto(results, front, tmp_path / "p.png", budget_ms=6.0,
                      baseline_accuracy=0.92, baseline_latency_ms=10.0, title="t",
                      references=reference_points(results))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = chart_points(results, front, baseline=Reference("baseline", 0.92, 10.0, 1000),
                          references=reference_points(results))
    page = front_html(points, budget_ms=6.0, title="t")
    assert "<script src" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched at view time
    for p in points:  # every marker carries its hover text
        assert hover_text(p).split("\n")[0] in page
    text = hover_text(next(p for p in points if p.label == "#2"))
    assert "trial 2 (front rank 2): front only through size" in text
    assert hover_text(points[0]).startswith("trial 0 (front rank 3, best feasible): front")
    assert "policy: pruned 1/1 groups" in text and "latency: 4.000 ms" in text
    assert "size: 0.1 kB" in text and "accuracy: 0.8400" in text
    assert "budget 6 ms" in page and "int8 only (#0)" in page


def test_runs_url_opens_the_training_view():
    url = runs_url("sqlite:///x.db", "7", front_filter("abc"), order_by="metrics.`latency_ms`")
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?workflowType="
                          "machine_learning&searchFilter=")
    assert "tags.%60slimtune.pareto%60%20%3D%20%27true%27" in url
    assert runs_url("http://mlflow:5000/", "1").startswith("http://mlflow:5000/#/")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return published_job(tmp_path_factory.mktemp("front"))


def test_one_filter_lists_the_front(job):
    tmp, spec, tracker, parent, results, front, best, links = job
    found = tracker.client.search_runs([tracker.experiment_id], front_filter(parent),
                                       order_by=["tags.`slimtune.rank` ASC"])
    assert [r.data.tags["trial_id"] for r in found] == [str(r.trial_id) for r in front]
    assert [r.data.tags["slimtune.rank"] for r in found] == ["1", "2", "3"]
    assert [r.data.tags.get("slimtune.best") for r in found] == [None, None, "true"]
    for run in found:  # what the chart view needs to plot accuracy against latency
        assert {"accuracy", "latency_ms", "size_bytes"} <= set(run.data.metrics)
    assert read_links(tmp) == links
    assert links.front_url == job_links(spec.tracking_uri, tracker.experiment_id,
                                        parent).front_url


def test_parent_has_table_and_chart(job):
    tmp, spec, tracker, parent, results, front, best, links = job
    names = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {TABLE_FILE, "pareto.html"} <= names
    table = json.loads(Path(tracker.client.download_artifacts(parent, TABLE_FILE,
                                                              str(tmp))).read_text())
    cols = table["columns"]
    got = [dict(zip(cols, values, strict=True)) for values in table["data"]]
    assert [r["trial"] for r in got] == [1, 2, 0]
    assert [r["front"] for r in got] == ["accuracy-latency", "size", "accuracy-latency"]
    assert got[2]["best"] is True and got[0]["run_id"] == front[0].mlflow_run_id
    logged = json.loads(tracker.client.get_run(parent).data.tags["mlflow.loggedArtifacts"])
    assert {"path": TABLE_FILE, "type": "table"} in logged  # what the UI renders as a table


def test_registered_model_gives_the_trials_logits(job, tmp_path):
    import mlflow.onnx
    import mlflow.pyfunc

    from slimtune.results.registry import _mlflow_store, export_registered, onnx_logits

    tmp, spec, tracker, parent, results, front, best, links = job
    assert [m["trial"] for m in links.models] == [1, 2, 0]  # best last: the newest version
    assert links.models[-1] == {"trial": 0, "model_uri": links.models[-1]["model_uri"],
                                "registered": "models:/tiny-net/3", "best": True}
    onnx_path = tmp / "trials" / str(best.trial_id) / "model.onnx"
    x = np.random.default_rng(1).standard_normal((5, *INPUT)).astype(np.float32)
    want = onnx_logits(onnx_path, x)
    with _mlflow_store(spec.tracking_uri):
        proto = mlflow.onnx.load_model("models:/tiny-net/3")
        by_alias = mlflow.pyfunc.load_model("models:/tiny-net@best")
        model_info = mlflow.models.get_model_info("models:/tiny-net/3")
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want,
                               rtol=1e-6)
    got = by_alias.predict(x)
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-6)
    assert model_info.signature is not None and model_info.saved_input_example_info
    assert model_info.run_id == best.mlflow_run_id  # traced to the trial's run
    out = export_registered("models:/tiny-net/3", spec.tracking_uri, tmp_path / "exp")
    assert sorted(p.name for p in out) == ["model.onnx", "policy.json"]
    assert (tmp_path / "exp" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    version = tracker.client.get_model_version("tiny-net", "3")
    assert version.tags["slimtune.trial"] == "0" and version.tags["slimtune.rank"] == "3"


def test_export_cli_takes_a_registry_uri(job, tmp_path, capsys):
    from slimtune.cli import main

    tmp, spec, *_ = job
    code = main(["export", "models:/tiny-net@best", "--tracking-uri", spec.tracking_uri,
                 "--out", str(tmp_path / "o")])
    assert code == 0 and (tmp_path / "o" / "model.onnx").is_file()
    code = main(["export", "models:/nope/1", "--tracking-uri", spec.tracking_uri,
                 "--out", str(tmp_path / "p")])
    assert code == 2
    assert "models:/nope/1" in capsys.readouterr().err.splitlines()[-1]
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["export", "models:/x/1", "--tracking-uri", missing, "--out", "o"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_register_as_is_checked_in_the_spec(tmp_path):
    from slimtune.errors import SpecError

    with pytest.raises(SpecError, match="tracking.register_as"):
        parse_spec(tiny_job(tmp_path, tracking={"register_as": "a/b"}))
    with pytest.raises(SpecError, match="register_as needs a model"):
        parse_spec(tiny_job(tmp_path, tracking={"register_as": "a", "log_models": "none"}))


def test_dashboard_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from slimtune.cli import main

    assert main(["dashboard", str(tmp_path)]) == 2
    assert "no study.db" in capsys.readouterr().err
    (tmp_path / "study.db").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna_dashboard" else real(name, *a))
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'slimtune[dashboard]'" in err[0]


def test_summary_prints_the_ui_links(job, capsys):
    from slimtune.job import JobOutcome
    from slimtune.results.summary import print_summary

    tmp, spec, tracker, parent, results, front, best, links = job
    base = {"accuracy": 0.92, "test_accuracy": 0.91, "latency_ms": 10.0, "size_bytes": 1000,
            "macs": 10, "params": 10}
    print_summary(JobOutcome(tmp, results, front, best, base, 6.0, 0.1, spec.tracking_uri,
                             parent, 1.0, 1.0, 1.0))
    out = capsys.readouterr().out
    assert links.front_url in out and links.runs_url in out and links.chart_url in out
    assert "registered: models:/tiny-net/3  (trial 0, alias best)" in out


def test_republishing_untags_runs_that_left_the_front(job):
    from slimtune.results.front import publish_front

    tmp, spec, tracker, parent, results, front, best, links = job
    smaller = [r for r in front if r.trial_id != 1]  # as if a resumed job found better
    spec_no_models = spec.with_sections(tracking={"log_models": "none", "register_as": None})
    base = {"accuracy": 0.92, "latency_ms": 10.0, "size_bytes": 1000}
    try:
        publish_front(tracker, parent, results, smaller, best, tmp, spec_no_models, base,
                      budget_ms=6.0)
        found = tracker.client.search_runs([tracker.experiment_id], front_filter(parent))
        assert sorted(r.data.tags["trial_id"] for r in found) == ["0", "2"]
        gone = tracker.client.get_run(front[0].mlflow_run_id).data.tags
        assert gone["slimtune.pareto"] == "false" and "slimtune.rank" not in gone
    finally:  # leave the module's job as the other tests expect it
        publish_front(tracker, parent, results, front, best, tmp, spec_no_models, base,
                      budget_ms=6.0)
        (tmp / "mlflow.json").write_text(json.dumps(links.__dict__))


def test_job_finish_publishes_the_front(tmp_path):
    """job._finish on fake rows (no Ray): pareto.json/png/html, tags, table, best model."""
    import time

    from slimtune.job import _finish

    out, spec, tracker, parent, results, front, best, _ = published_job(tmp_path)
    for r in results:
        if r.feasible and not (out / "trials" / str(r.trial_id) / "model.onnx").exists():
            src = out / "trials" / str(best.trial_id)
            (out / "trials" / str(r.trial_id)).mkdir()
            for f in src.iterdir():
                (out / "trials" / str(r.trial_id) / f.name).write_bytes(f.read_bytes())
    (out / "trials.jsonl").write_text("")
    (out / "mlflow.json").unlink()
    base = {"accuracy": 0.92, "test_accuracy": 0.9, "latency_ms": 10.0, "size_bytes": 1000,
            "macs": 10, "params": 10}
    spec = spec.with_sections(evaluate=[], tracking={"log_models": "best",
                                                     "register_as": "finish-net"})
    outcome = _finish(spec, out, tracker, results, base, 6.0, time.perf_counter(), 1.0)
    assert [r.trial_id for r in outcome.front] == [1, 2, 0]
    for name in ("pareto.json", "pareto.png", "pareto.html", "mlflow.json"):
        assert (out / name).is_file(), name
    links = read_links(out)
    assert [m["registered"] for m in links.models] == ["models:/finish-net/1"]
    names = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"pareto.png", "pareto.html", TABLE_FILE} <= names
