"""MLflow tracking: one parent run per job, one child run per trial, never left RUNNING."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slimtune.errors import UserInputError
from slimtune.result import TrialResult

_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - configures its loggers on import; quiet them afterwards

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve()
    return None


def absolute_uri(uri: str) -> str:
    """``sqlite:///rel.db`` made absolute, so the printed URI works from any directory."""
    db = sqlite_path(uri)
    return f"sqlite:///{db}" if db is not None else uri


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    db = sqlite_path(uri)
    if db is not None:
        return f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def check_tracking_uri(uri: str) -> None:
    """Fail early, with one line, on a store we cannot write to."""
    db = sqlite_path(uri)
    if uri.startswith("sqlite:") and db is None:
        raise UserInputError(f"tracking.uri {uri!r}: use sqlite:///path/to/file.db")
    if db is not None and not db.parent.is_dir():
        raise UserInputError(f"tracking.uri {uri!r}: directory {db.parent} does not exist")
    schemes = ("sqlite:", "http://", "https://", "postgresql", "mysql", "file:", "databricks")
    if not uri.startswith(schemes):
        raise UserInputError(f"tracking.uri {uri!r}: unsupported scheme (use sqlite:///FILE.db "
                             "or http://HOST:PORT)")


class Tracker:
    """Writes a job to MLflow through ``MlflowClient`` (no global active-run state)."""

    def __init__(self, uri: str, experiment: str) -> None:
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment)
        self.parent_id: str | None = None
        self._open: set[str] = set()

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = sqlite_path(self.uri)
        location = (db.parent / "mlartifacts" / name).as_uri() if db is not None else None
        # "custom_model_development" makes the MLflow 3 UI open the training-runs view
        return self.client.create_experiment(
            name, artifact_location=location,
            tags={"mlflow.experimentKind": "custom_model_development"})

    def _create(self, name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        self._open.add(run.info.run_id)
        return run.info.run_id

    def log(self, run_id: str, *, params: Mapping[str, Any] = {},
            metrics: Mapping[str, float] = {}, tags: Mapping[str, Any] = {}) -> None:
        from mlflow.entities import Metric, Param, RunTag

        param_list = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, max(len(param_list), 1), _BATCH):
            chunk = param_list[i:i + _BATCH]
            first = i == 0
            self.client.log_batch(
                run_id, params=chunk,
                metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()] if first else [],
                tags=[RunTag(k, str(v)) for k, v in tags.items()] if first else [])

    def start_job(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        self.parent_id = self._create(name, {"slimtune.kind": "job", **tags})
        self.log(self.parent_id, params=params)
        return self.parent_id

    def start_trial(self, trial_id: int, params: Mapping[str, Any], searcher: str) -> str:
        assert self.parent_id is not None, "start_job first"
        run_id = self._create(f"trial-{trial_id}", {
            "mlflow.parentRunId": self.parent_id, "slimtune.kind": "trial",
            "trial_id": str(trial_id), "searcher": searcher})
        self.log(run_id, params=params)
        return run_id

    def end_trial(self, run_id: str, result: TrialResult) -> None:
        metrics = {k: v for k, v in trial_metrics(result).items() if v is not None}
        tags = {"feasible": str(result.feasible).lower(), "state": result.state}
        if result.error:
            tags["error"] = result.error[:5000]
        self.log(run_id, metrics=metrics, tags=tags)
        self.end(run_id, "FAILED" if result.state == "failed" else "FINISHED")

    def log_artifacts(self, run_id: str, paths: Iterable[Path], subdir: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)
        self._open.discard(run_id)

    def close_all(self, status: str) -> None:
        """Terminate every run still open (children first): used on errors and Ctrl-C."""
        for run_id in sorted(self._open, key=lambda r: r == self.parent_id):
            try:
                self.end(run_id, status)
            except Exception:  # noqa: BLE001 - best effort while already failing
                logging.getLogger(__name__).warning("could not close MLflow run %s", run_id)


def trial_metrics(result: TrialResult) -> dict[str, float | None]:
    """The numbers of a trial as MLflow metrics."""
    lat = result.latency
    return {
        "accuracy": result.accuracy,
        "test_accuracy": result.test_accuracy,
        "latency_ms": result.latency_ms,
        "latency_p10_ms": lat.get("p10_ms"),
        "latency_p90_ms": lat.get("p90_ms"),
        "latency_cv": lat.get("cv"),
        "size_bytes": result.size_bytes,
        "macs": result.macs,
        "params": result.params,
        "budget_ms": result.budget_ms,
        "feasible": float(result.feasible),
        "trial_seconds": result.seconds,
    }
