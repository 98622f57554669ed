"""MLflow briefly unreachable: records are journalled locally, then synced in order.

The outage is a real one (an http tracking URI on a loopback port nothing listens on);
the store that comes back is a real SQLite MLflow store.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.tracking import PLACEHOLDER, Tracker, TrackingUnavailable
from slimtune.resume import sync_or_stop
from tests.raycluster import free_ports


@pytest.fixture
def down_client(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    (port,) = free_ports(1)
    return MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")


def test_outage_is_journalled_then_synced(tmp_path, down_client, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    journal = tmp_path / "mlflow-pending.jsonl"
    tracker = Tracker(uri, "outage", pending=journal)
    up_client = tracker.client
    parent = tracker.start_job("job", {"a": 1}, {"searcher": "random"})

    tracker.client = down_client  # the server goes away
    run = tracker.start_trial(0, {"prune.x": 0.5}, "random")
    assert run.startswith(PLACEHOLDER) and tracker.degraded
    assert "unreachable" in capsys.readouterr().err
    result = TrialResult(trial_id=0, policy=Policy(), state="ok", accuracy=0.5,
                         latency_ms=1.0, mlflow_run_id=run)
    tracker.end_trial(run, result)
    assert not tracker.sync()  # still away: nothing lost, nothing reordered
    ops = [json.loads(line)["op"] for line in journal.read_text().splitlines()]
    assert ops == ["create_run", "log_batch", "log_batch", "set_terminated"]

    (tmp_path / "trials.jsonl").write_text(json.dumps(result.to_dict()) + "\n")
    tracker.client = up_client  # back
    tracker.end(parent, "FINISHED")
    sync_or_stop(tracker, tmp_path)
    assert not journal.exists() and not tracker.degraded
    real = tracker.real_id(run)
    assert not real.startswith(PLACEHOLDER)
    got = up_client.get_run(real)
    assert got.info.status == "FINISHED" and got.data.metrics["accuracy"] == 0.5
    assert got.data.tags["mlflow.parentRunId"] == parent
    assert got.data.params["prune.x"] == "0.5"
    assert up_client.get_run(parent).info.status == "FINISHED"
    row = json.loads((tmp_path / "trials.jsonl").read_text())
    assert row["mlflow_run_id"] == real  # the placeholder in the outputs was replaced


def test_still_unreachable_at_the_end_stops_without_success(tmp_path, down_client,
                                                            monkeypatch):
    monkeypatch.setenv("SLIMTUNE_MLFLOW_SYNC_S", "1")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    journal = tmp_path / "mlflow-pending.jsonl"
    tracker = Tracker(uri, "outage", pending=journal)
    up_client = tracker.client
    parent = tracker.start_job("job", {}, {})
    tracker.client = down_client
    tracker.end(parent, "FINISHED")
    with pytest.raises(TrackingUnavailable, match="records kept in"):
        sync_or_stop(tracker, tmp_path)
    assert journal.is_file()
    assert up_client.get_run(parent).info.status == "RUNNING"  # not claimed finished

    # a later process (the resumed job) finds the journal and syncs it first
    again = Tracker(uri, "outage", pending=journal)
    assert not again.degraded and not journal.exists()
    assert up_client.get_run(parent).info.status == "FINISHED"


@pytest.mark.parametrize("key", ["prune.layer1.0.conv1", "stage(1).conv", "stage[1].conv",
                                 "a//b", "../x", "./x", "/x", "é" * 300, "k" * 251])
def test_every_key_is_one_mlflow_accepts_and_distinct_keys_stay_distinct(key):
    from mlflow.utils.validation import _validate_param_name

    from slimtune.results.tracking import mlflow_key

    clean = mlflow_key(key)
    _validate_param_name(clean)  # raises on a key MLflow rejects
    assert len(clean) <= 250
    if key == "prune.layer1.0.conv1":
        assert clean == key
    assert mlflow_key("stage(1).conv") != mlflow_key("stage[1].conv")


def test_a_key_mlflow_would_reject_is_logged_as_one_it_accepts(tmp_path):
    from slimtune.results.tracking import mlflow_key

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    journal = tmp_path / "mlflow-pending.jsonl"
    tracker = Tracker(uri, "keys", pending=journal)
    parent = tracker.start_job("job", {"prune.stage(1).conv": 0.5}, {"searcher": "random"})
    tracker.log(parent, metrics={"acc[top1]": 0.5}, tags={"note(x)": "y"})
    assert not tracker.degraded and not journal.exists()
    run = MlflowClient(uri).get_run(parent).data
    assert run.params[mlflow_key("prune.stage(1).conv")] == "0.5"
    assert run.metrics[mlflow_key("acc[top1]")] == 0.5
    assert run.tags[mlflow_key("note(x)")] == "y"


def test_a_record_mlflow_rejects_is_an_error_not_an_outage(tmp_path):
    """Logging a param again with another value is refused by MLflow itself: waiting for
    the server to come back would never get it in, so it is raised, not journalled."""
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    journal = tmp_path / "mlflow-pending.jsonl"
    tracker = Tracker(uri, "rejected", pending=journal)
    parent = tracker.start_job("job", {"a": 1}, {})
    with pytest.raises(MlflowException):
        tracker.log(parent, params={"a": 2})
    assert not tracker.degraded and not journal.exists()
