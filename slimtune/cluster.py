"""Jobs on a Ray cluster through Ray's Job Submission API (the dashboard's HTTP address).

``submit_job`` ships the job's working directory (by default the folder of the spec
file, so user model files and weights next to it travel too) as the Ray job's
``runtime_env.working_dir``, and runs ``python -m slimtune.cli run SPEC --out OUT
--address auto`` there: the job joins the cluster it runs on, and every trial is a Ray
Tune trial scheduled with the CPUs the spec asks for (``target.threads``), next to the
trials of any other job on that cluster.

``OUT`` is a path on the cluster: relative (default ``runs/NAME``) it lies inside the
job's working directory on the node that runs the driver (kept while Ray keeps the
session); give an absolute path on shared storage (``/runs/NAME`` in docker/compose.yaml)
to keep the output directory. The durable record of a submitted job is its MLflow
tracking server (``tracking.uri`` of the spec, or ``MLFLOW_TRACKING_URI`` here, which is
passed on to the job).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from slimtune.errors import UserInputError
from slimtune.security import (
    confined,
    ray_auth_refusal,
    use_ray_token_if_available,
    warn_if_exposed_mlflow,
    warn_if_exposed_ray,
)

ADDRESS_ENV = "RAY_ADDRESS"
# Left out of the shipped working directory: environments, VCS data, local run outputs.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", "runs", "mlruns", "mlartifacts",
            "mlruns.db", "ray_results", ".pytest_cache", ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_GRACE_S = 60  # seconds a stopped job's driver gets to close its runs before SIGKILL


class ClusterError(UserInputError):
    """The cluster could not be reached or refused a request (one line, exit 1)."""

    exit_code = 1


def resolve_address(address: str | None) -> str:
    """``--address``, else ``$RAY_ADDRESS``: the dashboard URL, e.g. http://HEAD:8265."""
    import os

    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise UserInputError("no Ray cluster: pass --address http://HEAD:8265 or set "
                             f"{ADDRESS_ENV}")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserInputError(f"Ray address {address!r}: give the dashboard's URL, "
                             "e.g. http://127.0.0.1:8265")
    warn_if_exposed_ray(address)
    return address.rstrip("/")


def client(address: str | None):
    """A ``JobSubmissionClient`` for the cluster at ``address`` (or ``$RAY_ADDRESS``),
    sending Ray's token when one is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
    or ``~/.ray/auth_token``), as ``ray.init(address=...)`` does, RAY_AUTH_MODE unset."""
    url = resolve_address(address)
    use_ray_token_if_available()
    from ray.job_submission import JobSubmissionClient

    try:
        jobs = JobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 - requests/Ray raise several kinds
        _refused(err, url)
        raise ClusterError(f"cannot reach the Ray dashboard at {url}: "
                           f"{_one_line(err)}") from None
    return jobs


class AuthRefusedError(UserInputError):
    """The cluster wants a (different) Ray token: one line naming what to set, exit 2."""


def _refused(err: BaseException, url: str = "") -> None:
    """Raise AuthRefusedError when ``err`` is Ray's token refusal."""
    line = ray_auth_refusal(url, f"{type(err).__name__}: {err}")
    if line:
        raise AuthRefusedError(line) from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _call(what: str, job_id: str, fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001
        _refused(err)
        text = _one_line(err)
        if "does not exist" in text or "404" in text:
            raise UserInputError(f"no job {job_id!r} on this cluster "
                                 "(see `slimtune list`)") from None
        raise ClusterError(f"{what} {job_id}: {text}") from None


@dataclass(frozen=True)
class Submission:
    job_id: str
    entrypoint: str
    working_dir: Path
    out: str
    tracking_uri: str


def plan_submission(job: str, *, out: str | None = None,
                    working_dir: Path | None = None) -> tuple[Submission, dict]:
    """Validate the spec here and build what is sent (no compute, no network)."""
    import os

    from slimtune.spec import load_spec

    spec = load_spec(job)  # one line, exit 2, before anything leaves this machine
    path = Path(job)
    if path.is_file():
        spec_file = path.resolve()
        wd = (working_dir or spec_file.parent).resolve()
        try:
            rel = spec_file.relative_to(wd).as_posix()
        except ValueError:
            raise UserInputError(f"{job}: the spec must be inside --working-dir {wd}") from None
    else:  # a built-in job: nothing of the user's to ship but the working directory
        wd = (working_dir or Path.cwd()).resolve()
        rel = job
    if not wd.is_dir():
        raise UserInputError(f"--working-dir {wd}: not a directory")
    out = out or f"runs/{spec.name}"
    if not out.startswith("/"):
        out = confined(out, "--out").as_posix()  # relative: inside the working directory
    uri = spec.tracking_uri
    entrypoint = shlex.join(["python", "-m", "slimtune.cli", "run", rel, "--out", out,
                             "--address", "auto"])
    # `slimtune stop`: Ray sends SIGTERM and SIGKILLs after this many seconds (3 by
    # default); the driver needs longer to close its MLflow runs as KILLED.
    env_vars = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        # The URI only: credentials are never shipped (they would show in the dashboard);
        # set MLFLOW_TRACKING_USERNAME/PASSWORD on the cluster's nodes.
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    runtime_env: dict = {"working_dir": str(wd), "excludes": EXCLUDES, "env_vars": env_vars}
    job_id = f"slimtune-{spec.name}-{uuid.uuid4().hex[:8]}"
    return Submission(job_id, entrypoint, wd, out, uri), runtime_env


def submit_job(address: str | None, job: str, *, out: str | None = None,
               working_dir: Path | None = None) -> Submission:
    resolve_address(address)  # no cluster named: one line before anything else
    plan, runtime_env = plan_submission(job, out=out, working_dir=working_dir)
    uri = plan.tracking_uri
    if not uri.startswith(("http://", "https://", "postgresql", "mysql", "databricks")):
        print(f"slimtune: warning: tracking URI {uri!r} is a file on the cluster node, not a "
              "tracking server: results will not come back here. Set tracking.uri or "
              "MLFLOW_TRACKING_URI to the team's MLflow server", file=sys.stderr)
    else:
        warn_if_exposed_mlflow(uri)
    jobs = client(address)
    try:
        jobs.submit_job(entrypoint=plan.entrypoint, runtime_env=runtime_env,
                        submission_id=plan.job_id,
                        metadata={"slimtune.out": plan.out, "slimtune.spec": job})
    except Exception as err:  # noqa: BLE001
        _refused(err)
        raise ClusterError(f"submit {plan.job_id}: {_one_line(err)}") from None
    return plan


def job_status(address: str | None, job_id: str) -> tuple[str, str]:
    """(state, message) of a job: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    jobs = client(address)
    info = _call("status", job_id, jobs.get_job_info, job_id)
    return str(info.status.value), info.message or ""


def job_logs(address: str | None, job_id: str) -> str:
    jobs = client(address)
    return _call("logs", job_id, jobs.get_job_logs, job_id)


def follow_logs(address: str | None, job_id: str) -> None:
    """Write the job's log to stdout as it grows, until the job ends."""
    jobs = client(address)
    _call("logs", job_id, jobs.get_job_info, job_id)  # an unknown id: one line, exit 2

    async def pump() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(pump())


def stop_job(address: str | None, job_id: str, *, wait_s: float = 60.0) -> str:
    """Ask the job to stop (SIGTERM to its driver: MLflow runs closed as KILLED), wait."""
    import time

    jobs = client(address)
    _call("stop", job_id, jobs.stop_job, job_id)
    deadline = time.monotonic() + wait_s
    while True:
        state = str(_call("status", job_id, jobs.get_job_status, job_id).value)
        if state in TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def list_jobs(address: str | None) -> list[dict]:
    jobs = client(address)
    try:
        found = jobs.list_jobs()
    except Exception as err:  # noqa: BLE001
        _refused(err)
        raise ClusterError(f"list: {_one_line(err)}") from None
    rows = []
    for job in sorted(found, key=lambda j: j.start_time or 0):
        rows.append({"id": job.submission_id or job.job_id, "state": str(job.status.value),
                     "start_time": job.start_time, "entrypoint": job.entrypoint or ""})
    return rows
