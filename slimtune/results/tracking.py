"""MLflow tracking: one parent run per job, one child run per trial, never left RUNNING."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from slimtune.errors import UserInputError
from slimtune.evaluate.registry import flat_metrics
from slimtune.result import TrialResult

_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
PLACEHOLDER = "pending-"  # run ids handed out while MLflow is unreachable
PENDING_FILE = "mlflow-pending.jsonl"  # the journal, in the job's output directory


#: what MLflow accepts in a param, metric or tag key (mlflow.utils.validation), and its limits
_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_MAX_KEY, _MAX_PARAM, _MAX_TAG = 250, 6000, 8000


def mlflow_key(key: str) -> str:
    """``key`` as MLflow accepts it: unchanged when it can; otherwise its other characters
    (a module named ``stage(1)``, say) and path-like parts made ``_`` and a short hash of
    the original added, so two keys never become one, cut to MLflow's 250 characters."""
    clean = _KEY_CHARS.sub("_", key)
    if posixpath.normpath(clean) != clean or clean in (".", "") or clean.startswith(("..", "/")):
        clean = clean.replace("/", "_").replace(".", "_") or "_"
    if clean == key and len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{clean[:_MAX_KEY - 9]}_{digest}"


def _rejected(err: BaseException) -> bool:
    """MLflow refused the record itself (a bad key or value): not an outage to wait out."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code == "INVALID_PARAMETER_VALUE"


class TrackingUnavailable(RuntimeError):
    """MLflow stayed unreachable: records are kept in the journal, the job is not done."""

    exit_code = 3


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _read_journal(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_journal(path: Path | None, ops: list[dict[str, Any]]) -> None:
    if path is None:
        return
    if not ops:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
    os.replace(tmp, path)


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


def ui_base(uri: str) -> str:
    """The address of the MLflow UI for this store: the server itself, or the local
    ``mlflow ui`` that :func:`ui_command` starts."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def runs_url(uri: str, experiment_id: str, search_filter: str = "", *,
             order_by: str = "", ascending: bool = True, chart: bool = False) -> str:
    """The MLflow 3 UI address of an experiment's runs table, filtered.

    ``workflowType=machine_learning`` opens the "Model training" view: without it MLflow 3
    opens on its GenAI overview (traces), where training runs do not show.
    """
    query = {"workflowType": "machine_learning"}
    if search_filter:
        query["searchFilter"] = search_filter
    if order_by:
        query.update(orderByKey=order_by, orderByAsc=str(ascending).lower())
    if chart:
        query["compareRunsMode"] = "CHART"
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_url(uri: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """The MLflow 3 UI address of one run (its metrics, tags and artifacts), or of one of
    its artifacts opened in the artifact viewer."""
    path = f"/artifactPath/{quote(artifact)}" if artifact else ""
    return (f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}{path}"
            "?workflowType=machine_learning")


def children_filter(parent_run_id: str) -> str:
    return f"tags.mlflow.parentRunId = '{parent_run_id}'"


def front_filter(parent_run_id: str) -> str:
    """The runs-table filter that lists a job's Pareto front (tagged by publish_front)."""
    return f"tags.`slimtune.pareto` = 'true' and {children_filter(parent_run_id)}"


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

    def __init__(self, uri: str, experiment: str, pending: Path | None = None) -> None:
        """``pending``: a journal file; with it, MLflow calls that fail (server briefly
        unreachable) are kept there in order and replayed by ``sync`` instead of failing
        the job. Without it, a failing call raises as before."""
        _quiet_mlflow()
        if pending is not None:  # the journal is the retry: fail fast instead of minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.pending = pending
        self._queue: list[dict[str, Any]] = _read_journal(pending)
        self.run_ids: dict[str, str] = {}  # placeholder -> real run id, filled by sync
        self.parent_id: str | None = None
        self._open: set[str] = set()
        self.experiment_id = self._experiment(experiment)
        if self._queue:
            self.sync()  # an earlier job's records first, in order

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = sqlite_path(self.uri)
        location = (db.parent / "mlartifacts" / name).as_uri() if db is not None else None
        # marks a training experiment; the MLflow 3.17 UI still opens on its GenAI view
        # (the printed links carry workflowType=machine_learning: slimtune.results.front)
        return self.client.create_experiment(
            name, artifact_location=location,
            tags={"mlflow.experimentKind": "custom_model_development"})

    def _create(self, name: str, tags: Mapping[str, str]) -> str:
        run_id = self._do("create_run", None, name=name, tags=dict(tags),
                          start_time=int(time.time() * 1000))
        self._open.add(run_id)
        return run_id

    # -- every write goes through _do: applied now, or journalled while MLflow is away --

    @property
    def degraded(self) -> bool:
        """True while records wait in the journal for MLflow to come back."""
        return bool(self._queue)

    def _apply(self, op: dict[str, Any]) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self.run_ids.get(op.get("run_id") or "", op.get("run_id"))
        kind = op["op"]
        if kind == "create_run":
            tags = {k: self.run_ids.get(v, v) if k == "mlflow.parentRunId" else v
                    for k, v in op["tags"].items()}
            run = self.client.create_run(self.experiment_id, run_name=op["name"], tags=tags,
                                         start_time=op["start_time"])
            return run.info.run_id
        if kind == "log_batch":
            self.client.log_batch(
                run_id, params=[Param(k, v) for k, v in op["params"]],
                metrics=[Metric(k, v, op["time"], op.get("step", 0)) for k, v in op["metrics"]],
                tags=[RunTag(k, v) for k, v in op["tags"]])
        elif kind == "set_terminated":
            self.client.set_terminated(run_id, op["status"], end_time=op["time"])
        elif kind == "log_artifact":
            self.client.log_artifact(run_id, op["path"], artifact_path=op["subdir"])
        elif kind == "update_run":
            self.client.update_run(run_id, status=op["status"])
        elif kind == "log_table":
            self.client.log_table(run_id, data=op["data"], artifact_file=op["artifact_file"])
        else:
            raise ValueError(f"unknown MLflow journal op {kind!r}")
        return None

    def _do(self, kind: str, run_id: str | None, **args: Any) -> Any:
        op = {"op": kind, "run_id": run_id, **args}
        if not self._queue:
            try:
                return self._apply(op)
            except (TypeError, ValueError, AttributeError, KeyError):
                raise
            except Exception as err:  # noqa: BLE001 - HTTP, SQL and MLflow errors alike
                if self.pending is None or _rejected(err):
                    raise
                logging.getLogger(__name__).warning("MLflow call failed: %s", err)
                print(f"slimtune: warning: MLflow at {self.uri} is unreachable "
                      f"({_first_line(err)}); keeping records in {self.pending} and "
                      "syncing when it is back", file=sys.stderr, flush=True)
        result = None
        if kind == "create_run":
            result = op["placeholder"] = f"{PLACEHOLDER}{uuid.uuid4().hex}"
        self._queue.append(op)
        _write_journal(self.pending, self._queue)
        return result

    def sync(self) -> bool:
        """Replay the journal in order; True when nothing is left in it."""
        while self._queue:
            op = self._queue[0]
            try:
                result = self._apply(op)
            except Exception as err:  # noqa: BLE001
                logging.getLogger(__name__).info("MLflow sync stopped: %s", err)
                return False
            if op["op"] == "create_run":
                self.run_ids[op["placeholder"]] = result
                if op["placeholder"] in self._open:
                    self._open.discard(op["placeholder"])
                    self._open.add(result)
                if self.parent_id == op["placeholder"]:
                    self.parent_id = result
            self._queue.pop(0)
            _write_journal(self.pending, self._queue)
        return True

    def real_id(self, run_id: str) -> str:
        """The MLflow run id of ``run_id`` (a placeholder while journalled)."""
        return self.run_ids.get(run_id, run_id)

    def resume_job(self, parent_id: str, finished: Mapping[str, TrialResult]) -> dict[str, int]:
        """Reopen a stopped job's parent run and close its children left RUNNING.

        A child whose trial is in ``finished`` (by run id) gets its results and ends
        FINISHED/FAILED; any other child was interrupted and ends KILLED.
        """
        self.parent_id = self.real_id(parent_id)
        self._do("update_run", self.parent_id, status="RUNNING")
        self._open.add(self.parent_id)
        counts = {"killed": 0, "synced": 0}
        for run in self.open_children(self.parent_id):
            result = finished.get(run.info.run_id)
            if result is not None:
                self.end_trial(run.info.run_id, result)
                counts["synced"] += 1
            else:
                self.end(run.info.run_id, "KILLED")
                counts["killed"] += 1
        return counts

    def open_children(self, parent_id: str) -> list:
        """Child runs of ``parent_id`` still RUNNING."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' "
                          "and attributes.status = 'RUNNING'",
            max_results=10_000)

    def log(self, run_id: str, *, params: Mapping[str, Any] = {},
            metrics: Mapping[str, float] = {}, tags: Mapping[str, Any] = {},
            step: int = 0) -> None:
        """``step``: a later stage of the same run (a scoring search's final figures after
        its measured ones) logs its metrics at a higher step, which MLflow shows."""
        param_list = [(mlflow_key(k), str(v)[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, max(len(param_list), 1), _BATCH):
            chunk = param_list[i:i + _BATCH]
            first = i == 0
            self._do("log_batch", run_id, params=chunk, time=0, step=step,
                     metrics=[(mlflow_key(k), float(v)) for k, v in metrics.items()]
                     if first else [],
                     tags=[(mlflow_key(k), str(v)[:_MAX_TAG]) for k, v in tags.items()]
                     if first else [])

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

    def end_trial(self, run_id: str, result: TrialResult, *, step: int = 0) -> None:
        metrics = {k: v for k, v in trial_metrics(result).items() if v is not None}
        tags = {"feasible": str(result.feasible).lower(), "state": result.state,
                "stage": result.stage}
        if result.reference:
            tags["reference"] = result.reference
        if result.error:
            tags["error"] = result.error[:5000]
        if result.violations:
            tags["violations"] = ",".join(result.violations)
        self.log(run_id, metrics=metrics, tags=tags, step=step)
        self.end(run_id, "FAILED" if result.state == "failed" else "FINISHED")

    def log_artifacts(self, run_id: str, paths: Iterable[Path], subdir: str | None = None) -> None:
        for path in paths:
            self._do("log_artifact", run_id, path=str(path), subdir=subdir)

    def log_table(self, run_id: str, data: Mapping[str, list], artifact_file: str) -> None:
        """A table (columns of JSON values) the MLflow UI renders, as a run artifact."""
        self._do("log_table", run_id, data={k: list(v) for k, v in data.items()},
                 artifact_file=artifact_file)

    def end(self, run_id: str, status: str) -> None:
        self._do("set_terminated", run_id, status=status, time=int(time.time() * 1000))
        self._open.discard(run_id)

    def close_on(self, err: BaseException) -> None:
        """Close every open run for ``err`` ending a job: KILLED on Ctrl-C or ``slimtune
        stop`` (KeyboardInterrupt), FAILED on anything else."""
        self.close_all("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")

    def close_all(self, status: str) -> None:
        """Terminate every run still open (children first): used on errors and Ctrl-C.

        Children are also looked up in MLflow: a signal that lands between MLflow creating
        a trial's run and this tracker noting it would otherwise leave that run RUNNING.
        """
        open_ids = sorted(self._open, key=lambda r: r == self.parent_id)
        if self.parent_id is not None and not self.degraded:
            try:
                found = [r.info.run_id for r in self.open_children(self.real_id(self.parent_id))]
            except Exception:  # noqa: BLE001 - best effort while already failing
                found = []
            open_ids = [r for r in found if r not in self._open] + open_ids
        for run_id in open_ids:
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
        "score": result.score,
        "predicted_latency_ms": result.predicted_latency_ms,
        "latency_ratio": result.latency_ratio,
        "finetune_steps": result.finetune_steps,
        **flat_metrics(result.metrics),
    }
