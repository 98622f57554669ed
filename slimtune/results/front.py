"""The front where users look: MLflow tags, table, chart, models and the UI links.

``publish_front`` runs once at the end of a job, after ``pareto.json`` is written:

- each front trial's child run gets the tags ``slimtune.pareto = true`` and
  ``slimtune.rank`` (1 = fastest), the best trial's also ``slimtune.best = true``, so
  the runs-table filter ``tags.`slimtune.pareto` = 'true'`` lists the front;
- the parent run gets the front as an MLflow table (``pareto_front.json``, shown by the UI's
  artifact view) and the interactive chart ``pareto.html`` (``slimtune.results.front_html``);
- the best trial's model (``tracking.log_models: front``: every front model) is logged with
  the ONNX flavour and, with ``tracking.register_as``, registered (``slimtune.results.registry``);
- ``DIR/mlflow.json`` keeps the UI links that the end-of-job summary prints.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.result import TrialResult
from slimtune.results.front_html import front_html
from slimtune.results.outputs import write_json
from slimtune.results.pareto import (
    Reference,
    chart_points,
    front_2d,
    policy_summary,
    reference_points,
)
from slimtune.results.tracking import (
    Tracker,
    children_filter,
    front_filter,
    run_url,
    runs_url,
    ui_command,
)

log = logging.getLogger(__name__)
TABLE_FILE = "pareto_front.json"  # the parent run's MLflow table
HTML_FILE = "pareto.html"
LINKS_FILE = "mlflow.json"


@dataclass(frozen=True)
class FrontLinks:
    """Where a job's front is in MLflow (``DIR/mlflow.json``)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    ui_command: str
    runs_url: str  # the job's trials, Model training view, fastest first
    front_url: str  # only the front's runs
    chart_url: str  # the front's runs in the chart view (choose accuracy vs latency_ms)
    parent_url: str  # the parent run: table, pareto.html, pareto.png under Artifacts
    table_url: str = ""  # the parent's front table, opened
    models: list[dict[str, Any]] = field(default_factory=list)


def job_links(uri: str, experiment_id: str, parent_run_id: str) -> FrontLinks:
    order = "metrics.`latency_ms`"
    return FrontLinks(
        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
        ui_command=ui_command(uri),
        runs_url=runs_url(uri, experiment_id, children_filter(parent_run_id), order_by=order),
        front_url=runs_url(uri, experiment_id, front_filter(parent_run_id), order_by=order),
        # sorted by a metric, MLflow lists the children flat instead of under the parent
        chart_url=runs_url(uri, experiment_id, front_filter(parent_run_id), order_by=order,
                           chart=True),
        parent_url=run_url(uri, experiment_id, parent_run_id),
        table_url=run_url(uri, experiment_id, parent_run_id, TABLE_FILE))


def read_links(out_dir: Path) -> FrontLinks | None:
    """The links ``publish_front`` wrote into ``out_dir``, if it did."""
    import json

    path = out_dir / LINKS_FILE
    if not path.is_file():
        return None
    return FrontLinks(**json.loads(path.read_text()))


def front_table(front: Sequence[TrialResult], best: TrialResult | None) -> list[dict[str, Any]]:
    """One row a front trial, fastest first: what the MLflow table and the HTML page show."""
    on_2d = {r.trial_id for r in front_2d(front)}
    return [{
        "rank": i, "trial": r.trial_id,
        "best": bool(best is not None and r.trial_id == best.trial_id),
        "accuracy": r.accuracy, "test_accuracy": r.test_accuracy,
        "latency_ms": r.latency_ms, "size_kB": (r.size_bytes or 0) / 1e3,
        "macs_M": (r.macs or 0) / 1e6,
        "front": "accuracy-latency" if r.trial_id in on_2d else "size",
        "policy": policy_summary(r.policy), "run_id": r.mlflow_run_id,
    } for i, r in enumerate(front, 1)]


def publish_front(tracker: Tracker, parent_run_id: str, results: Sequence[TrialResult],
                  front: Sequence[TrialResult], best: TrialResult | None, out_dir: Path,
                  spec: Any, baseline: dict, references: Sequence[Reference] = (), *,
                  budget_ms: float | None = None,
                  example: np.ndarray | None = None) -> FrontLinks:
    """Tag, table, chart and models of a finished job's front (see the module docstring).

    ``references``: labelled points to mark besides the reference policies found among
    the trials (``slimtune.results.pareto.reference_points``). ``example``: a few real inputs for
    the logged models' input example (default: ``baseline/saliency.npz``'s, else random).
    A model that cannot be logged costs a warning, not the finished job.
    """
    budget = budget_ms if budget_ms is not None else float(baseline.get("budget_ms") or 0.0)
    found = reference_points(results)
    given = {ref.trial_id for ref in references if ref.trial_id is not None}
    refs = [*references, *(ref for ref in found if ref.trial_id not in given)]
    base = Reference("baseline", baseline["accuracy"], baseline["latency_ms"],
                     baseline.get("size_bytes"))
    rows = front_table(front, best)
    _untag_former_front(tracker, parent_run_id, {row["run_id"] for row in rows})
    for row in rows:
        run_id = row["run_id"]
        if run_id:
            tracker.log(run_id, tags={"slimtune.pareto": "true", "slimtune.rank": row["rank"],
                                      "slimtune.front": row["front"],
                                      **({"slimtune.best": "true"} if row["best"] else {})})
    points = chart_points(results, front, baseline=base, references=refs)
    title = f"{spec.name}: {spec.search.searcher}, {len(results)} trials"
    html_path = out_dir / HTML_FILE
    html_path.write_text(front_html(points, budget_ms=budget, title=title, table=rows))
    columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else ())}
    if columns:
        tracker.log_table(parent_run_id, columns, TABLE_FILE)
    tracker.log_artifacts(parent_run_id, [html_path])
    links = job_links(tracker.uri, tracker.experiment_id, tracker.real_id(parent_run_id))
    tracker.log(parent_run_id, tags={"slimtune.front_filter": front_filter(links.parent_run_id),
                                     "slimtune.front_url": links.front_url})
    models = _log_models(tracker, front, best, out_dir, spec, example)
    links = FrontLinks(**{**asdict(links), "models": models})
    write_json(out_dir / LINKS_FILE, asdict(links))
    return links


def _untag_former_front(tracker: Tracker, parent_run_id: str, keep: set[str]) -> None:
    """A resumed job's front can change: runs tagged by an earlier publish that are no
    longer on it get ``slimtune.pareto = false`` (and lose their rank)."""
    if tracker.degraded:
        return
    parent = tracker.real_id(parent_run_id)
    real_keep = {tracker.real_id(r) for r in keep}
    for run in tracker.client.search_runs([tracker.experiment_id], front_filter(parent),
                                          max_results=10_000):
        if run.info.run_id not in real_keep:
            tracker.log(run.info.run_id, tags={"slimtune.pareto": "false",
                                               "slimtune.best": "false"})
            tracker.client.delete_tag(run.info.run_id, "slimtune.rank")


def _example(out_dir: Path, example: np.ndarray | None) -> np.ndarray | None:
    if example is not None:
        return example
    saved = out_dir / "baseline" / "saliency.npz"
    if saved.is_file():
        with np.load(saved) as data:
            if "inputs" in data:
                return data["inputs"][:2]
    return None


def _log_models(tracker: Tracker, front: Sequence[TrialResult], best: TrialResult | None,
                out_dir: Path, spec: Any, example: np.ndarray | None) -> list[dict[str, Any]]:
    """The best model (``log_models: front``: every front model, best last so its version
    is the newest) logged and registered; skipped while MLflow is unreachable."""
    from slimtune.results.registry import log_trial_model, set_best_alias

    track = spec.tracking
    mode = getattr(track, "log_models", "best")
    register_as = getattr(track, "register_as", None)
    if mode == "none" or best is None:
        return []
    chosen = [r for r in front if best is None or r.trial_id != best.trial_id] \
        if mode == "front" else []
    chosen.append(best)
    if tracker.degraded:
        _say("MLflow unreachable: models not logged (slimtune export DIR still works)")
        return []
    rank = {r.trial_id: i for i, r in enumerate(front, 1)}
    x = _example(out_dir, example)
    done = []
    for r in chosen:
        trial_dir = out_dir / "trials" / str(r.trial_id)
        if not (trial_dir / "model.onnx").is_file() or not r.mlflow_run_id:
            continue
        tags = {"slimtune.job_run_id": tracker.real_id(tracker.parent_id or "")}
        if r.trial_id in rank:
            tags["slimtune.rank"] = str(rank[r.trial_id])
        try:
            model = log_trial_model(tracker.uri, tracker.experiment_id,
                                    _with_real_id(tracker, r), trial_dir,
                                    register_as=register_as, example=x, tags=tags)
            if r.trial_id == best.trial_id:
                set_best_alias(tracker.uri, model)
        except Exception as err:  # noqa: BLE001 - the search is done and recorded
            _say(f"model of trial {r.trial_id} not logged to MLflow: "
                 f"{type(err).__name__}: {str(err).strip()[:200]}")
            continue
        done.append({"trial": r.trial_id, "model_uri": model.model_uri,
                     "registered": model.registry_uri, "best": r.trial_id == best.trial_id})
    return done


def _with_real_id(tracker: Tracker, r: TrialResult) -> TrialResult:
    from dataclasses import replace

    return replace(r, mlflow_run_id=tracker.real_id(r.mlflow_run_id))


def _say(message: str) -> None:
    print(f"slimtune: {message}", file=sys.stderr, flush=True)
