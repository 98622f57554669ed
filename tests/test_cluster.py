"""Jobs through a real Ray head on 127.0.0.1 (slow): submit, status, logs, list, stop.

Two tiny jobs are submitted at once and both followed to SUCCEEDED; their results are
read back from MLflow; the latency lock's log shows no two measurements overlapped; a
third job is stopped while it runs and ends STOPPED with no MLflow run left RUNNING.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.jobs import tiny_job
from tests.raycluster import RayHead

pytestmark = pytest.mark.slow

SLIMTUNE = [sys.executable, "-m", "slimtune.cli"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(SLIMTUNE_CACHE=str(root / "cache"), SLIMTUNE_LOCK_DIR=str(root),
               SLIMTUNE_LOCK_LOG=str(root / "lock.log"))
    head = RayHead(env)
    try:
        head.wait_ready()
        yield head, root
    finally:
        head.stop()


def _cli(head: RayHead, *args: str, address: bool = True, timeout: float = 120,
         env_address: bool = False) -> subprocess.CompletedProcess:
    env = dict(head.env)
    if env_address:
        env["RAY_ADDRESS"] = head.address
    cmd = [*SLIMTUNE, *args, *(["--address", head.address] if address else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _job_dir(root: Path, name: str, trials: int, **search) -> Path:
    folder = root / name
    folder.mkdir()
    job = tiny_job(folder, name=name, search={"searcher": "random", "trials": trials,
                                              "seed": 0, **search})
    job["tracking"]["experiment"] = name
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder


def _status(head: RayHead, job_id: str) -> str:
    done = _cli(head, "status", job_id)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _wait(head: RayHead, job_id: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = _status(head, job_id)
        if state in states or time.monotonic() > deadline:
            return state
        time.sleep(2)


def test_two_jobs_at_once_share_the_cluster(cluster):
    head, root = cluster
    ids = {}
    for name in ("job-a", "job-b"):  # both submitted before either starts its search
        folder = _job_dir(root, name, trials=3)
        done = _cli(head, "submit", str(folder / "job.yaml"), "--out", str(root / f"{name}-out"))
        assert done.returncode == 0, done.stderr
        ids[name] = done.stdout.strip().splitlines()[-1]
        assert ids[name].startswith(f"slimtune-{name}-")

    listed = _cli(head, "list", address=False, env_address=True)  # RAY_ADDRESS fallback
    assert listed.returncode == 0, listed.stderr
    assert all(job_id in listed.stdout for job_id in ids.values())
    # both held by the cluster at once (PENDING or RUNNING), neither finished yet
    assert {_status(head, i) for i in ids.values()} <= {"PENDING", "RUNNING"}

    follow = _cli(head, "logs", ids["job-a"], "--follow", timeout=400)
    assert follow.returncode == 0, follow.stderr
    assert "Pareto front" in follow.stdout  # the job's summary, streamed until it ended
    assert _wait(head, ids["job-a"], {"SUCCEEDED", "FAILED"}, 30) == "SUCCEEDED"
    assert _wait(head, ids["job-b"], {"SUCCEEDED", "FAILED"}, 300) == "SUCCEEDED", \
        _cli(head, "logs", ids["job-b"]).stdout[-3000:]

    for name in ids:  # results read back from MLflow
        client = MlflowClient(f"sqlite:///{root / name / 'mlruns.db'}")
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        trials = [r for r in runs if r.data.tags.get("slimtune.kind") == "trial"]
        assert len(trials) == 3 and {r.info.status for r in runs} == {"FINISHED"}
        assert all("latency_ms" in r.data.metrics for r in trials)
        assert (root / f"{name}-out" / "pareto.json").is_file()

    # the latency lock: measurements of both jobs, never two at once
    events = [line.split() for line in (root / "lock.log").read_text().splitlines()]
    spans, open_at = [], {}
    for kind, _what, pid, ns in events:
        if kind == "start":
            assert not open_at, f"measurement in {pid} started while {open_at} was measuring"
            open_at[pid] = int(ns)
        else:
            spans.append((open_at.pop(pid), int(ns), pid))
    assert not open_at
    assert len({pid for *_, pid in spans}) >= 2  # several worker processes measured
    ordered = sorted(spans)
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False))


def test_stop_a_running_job(cluster):
    head, root = cluster
    folder = _job_dir(root, "job-stop", trials=50)
    done = _cli(head, "submit", str(folder / "job.yaml"), "--out", str(root / "stop-out"))
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 240
    while not (root / "stop-out" / "trials.jsonl").is_file():  # the search is under way
        assert time.monotonic() < deadline, _cli(head, "logs", job_id).stdout[-3000:]
        assert _status(head, job_id) in {"PENDING", "RUNNING"}
        time.sleep(1)
    stopped = _cli(head, "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip().splitlines()[-1] == "STOPPED"
    assert _status(head, job_id) == "STOPPED"
    client = MlflowClient(f"sqlite:///{folder / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("job-stop").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags.get("slimtune.kind") == "job")
    assert parent.info.status == "KILLED", _cli(head, "logs", job_id).stdout[-4000:]
    assert {r.info.status for r in runs} <= {"KILLED", "FINISHED", "FAILED"}


def test_unknown_job_and_bad_address(cluster):
    head, _ = cluster
    done = _cli(head, "status", "raysubmit_nope")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    bad = _cli(head, "list", address=False)
    assert bad.returncode == 2 and "RAY_ADDRESS" in bad.stderr
