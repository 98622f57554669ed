from __future__ import annotations

import pytest

from slimtune.errors import UserInputError
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.tracking import Tracker, check_tracking_uri, ui_command


def _status(tracker: Tracker, run_id: str) -> str:
    return tracker.client.get_run(run_id).info.status


def test_run_states_parent_and_children(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri, "exp")
    parent = tracker.start_job("job", {"model.arch": "resnet20"}, {"searcher": "tpe"})
    params = {f"bits.layer{i}": 32 for i in range(150)}  # more than one log_batch
    ok = tracker.start_trial(0, params, "tpe")
    bad = tracker.start_trial(1, {}, "tpe")
    hanging = tracker.start_trial(2, {}, "tpe")
    tracker.end_trial(ok, TrialResult(trial_id=0, policy=Policy(), state="ok", accuracy=0.9,
                                      latency_ms=1.0, size_bytes=10, latency={"p10_ms": 0.9}))
    tracker.end_trial(bad, TrialResult(trial_id=1, policy=Policy(), state="failed",
                                       error="RuntimeError: boom"))
    tracker.close_all("KILLED")
    assert _status(tracker, ok) == "FINISHED"
    assert _status(tracker, bad) == "FAILED"
    assert _status(tracker, hanging) == "KILLED"
    assert _status(tracker, parent) == "KILLED"
    run = tracker.client.get_run(ok)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["feasible"] == "true"
    assert run.data.metrics["accuracy"] == pytest.approx(0.9)
    assert len(run.data.params) == 150
    assert tracker.client.get_run(bad).data.tags["error"] == "RuntimeError: boom"


def test_close_all_finds_a_child_the_tracker_never_noted(tmp_path):
    """A signal between MLflow creating a trial's run and the tracker noting it."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "exp")
    parent = tracker.start_job("job", {}, {})
    orphan = tracker.start_trial(0, {}, "tpe")
    tracker._open.discard(orphan)  # as if interrupted inside _create
    tracker.close_all("KILLED")
    assert _status(tracker, orphan) == "KILLED"
    assert _status(tracker, parent) == "KILLED"
    assert tracker.open_children(parent) == []


def test_uri_checks(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path / 'x.db'}")
    check_tracking_uri("http://127.0.0.1:5000")
    with pytest.raises(UserInputError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'no' / 'x.db'}")
    with pytest.raises(UserInputError, match="unsupported scheme"):
        check_tracking_uri("ftp://x")
    assert "mlflow ui --backend-store-uri sqlite:///" in ui_command("sqlite:///m.db")
