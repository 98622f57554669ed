"""A real Ray head for tests, on 127.0.0.1, with its own temp dir, ports and token.

It runs ``ray start --head --block`` in a session of its own and is torn down by
signalling that session only: never ``ray stop``, which would stop every Ray on the
machine (other people's included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """``ray start --head`` with token auth; node IP and dashboard host ``host``."""

    def __init__(self, env: dict[str, str], num_cpus: int = 2, host: str = "127.0.0.1") -> None:
        # short: Ray's unix sockets live under it (path length limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="stray-", dir="/tmp"))
        gcs, dash, client, nm, om, agent, agent_grpc, rtenv, metrics = free_ports(9)
        self.address = f"http://{host}:{dash}"
        self.metrics_port = metrics  # Prometheus metrics, served by the dashboard agent
        self.token = token = secrets.token_hex(32)
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        self.log = open(self.temp_dir / "head.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address", host,
             "--port", str(gcs), "--dashboard-host", host, "--dashboard-port", str(dash),
             "--include-dashboard", "true", "--num-cpus", str(num_cpus),
             "--temp-dir", str(self.temp_dir / "ray"), "--disable-usage-stats",
             "--ray-client-server-port", str(client), "--node-manager-port", str(nm),
             "--object-manager-port", str(om), "--dashboard-agent-listen-port", str(agent),
             "--dashboard-agent-grpc-port", str(agent_grpc),
             "--runtime-env-agent-port", str(rtenv), "--metrics-export-port", str(metrics)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the Job API answers (asked from a child process: Ray reads its token-auth
        mode once per process, so this test process keeps its own)."""
        probe = ("from ray.job_submission import JobSubmissionClient as C; "
                 f"C({self.address!r}).list_jobs()")
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.head_log()[-2000:]}")
            done = subprocess.run([sys.executable, "-c", probe], env=self.env,
                                  capture_output=True, text=True, timeout=60, check=False)
            if done.returncode == 0:
                return
            last = done.stderr.strip().splitlines()[-1:] or ["?"]
            time.sleep(1.0)
        raise RuntimeError(f"Ray head not ready in {timeout}s: {last}")

    def processes(self) -> list[psutil.Process]:
        """Every process of this head (its session)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid:
                    found.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return found

    def head_log(self) -> str:
        return (self.temp_dir / "head.log").read_text()

    def stop(self) -> None:
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    proc.kill()
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
