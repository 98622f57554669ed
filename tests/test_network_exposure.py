"""What another host can reach (slow; root and network namespaces, else skipped).

A network namespace joined by a veth pair plays a machine on the LAN
(``tests/netns.py``). From there a client tries every TCP port the processes of a local
``slimtune`` Ray listen on (found with psutil): none may answer on the veth address.
Then a head started the way the README says (``RAY_AUTH_MODE=token ray start --head
--node-ip-address HEAD_IP --dashboard-host HEAD_IP``) is reached from there: every port
it listens on is tried, each open one is asked for something without the token, and
``slimtune submit`` is accepted with the token and refused without it (or with a wrong
one). The figures are printed (``-s``) for the README.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from tests.jobs import tiny_job
from tests.netns import OtherHost, unavailable
from tests.raycluster import RayHead

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="network namespaces: Linux")]

SLIMTUNE = [sys.executable, "-m", "slimtune.cli"]
RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

# A local job's Ray, as `slimtune run` starts it, holding one worker, until stdin closes.
LOCAL_JOB = """
import os, sys
import ray
from slimtune.ray_local import start_ray, stop_ray
start_ray(num_cpus=1)
ray.get(ray.remote(lambda: os.getpid()).remote())
node = ray.nodes()[0]
print("READY", node["NodeManagerAddress"], ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.readline()
stop_ray()
"""


@pytest.fixture(scope="module")
def other_host():
    why = unavailable()
    if why:
        pytest.skip(why)
    with OtherHost() as other:
        yield other


def _env(home, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS and k != "HOME"}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _listening(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``procs``."""
    found = set()
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sorted(found, key=lambda s: (s[1], s[0]))


def _settled(procs_of, timeout: float = 30.0) -> list[tuple[str, int, str]]:
    """The listening sockets, once two looks 2 s apart agree (agents start late)."""
    deadline = time.monotonic() + timeout
    last = _listening(procs_of())
    while time.monotonic() < deadline:
        time.sleep(2)
        now = _listening(procs_of())
        if now == last:
            return now
        last = now
    return last


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _control_listener() -> socket.socket:
    """A socket on all interfaces: proves the client over there reaches this host."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    return sock


def test_a_local_job_is_reachable_on_no_port_from_another_host(other_host, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_JOB], env=_env(home),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    control = _control_listener()
    try:
        ready = driver.stdout.readline().split()
        assert ready[:1] == ["READY"], driver.stderr.read()[-3000:]
        assert ready[1] == "127.0.0.1" and ready[2].startswith("127.0.0.1:"), ready  # advertised
        root = psutil.Process(driver.pid)
        sockets = _settled(lambda: [root, *root.children(recursive=True)])
        names = {name for *_, name in sockets}
        assert {"gcs_server", "raylet"} <= names and len(sockets) >= 6, sockets
        ports = sorted({port for _, port, _ in sockets})
        reach = other_host.connect([*ports, control.getsockname()[1]], _env(home))
        assert reach.pop(control.getsockname()[1]) == "open"  # the probe works
        reachable = sorted(p for p, state in reach.items() if state == "open")
        print(f"\nlocal job: {len(sockets)} listening sockets on {len(ports)} ports of "
              f"{len(names)} processes ({', '.join(sorted(names))}); tried from "
              f"{other_host.peer_ip} on {other_host.host_ip}: {len(reachable)} reachable")
        assert [s for s in sockets if not _is_loopback(s[0])] == []
        assert reachable == [], [s for s in sockets if s[1] in reachable]

        token = home / ".ray" / "auth_token"  # Ray's token auth, on by default, 0600
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    finally:
        control.close()
        if driver.poll() is None:
            driver.stdin.close()
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()


def _submit(other: OtherHost, head: RayHead, folder, home, **env: str):
    return other.run([*SLIMTUNE, "submit", str(folder / "job.yaml"), "--address",
                      head.address, "--out", str(folder / "out")], _env(home, **env))


def test_a_head_with_token_auth_serves_only_clients_with_the_token(other_host, tmp_path):
    home = tmp_path / "home"  # over there: no token anywhere unless given
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    head = RayHead(env, num_cpus=1, host=other_host.host_ip)
    try:
        head.wait_ready()
        sockets = _settled(head.processes)
        ports = sorted({port for _, port, _ in sockets})
        reach = other_host.connect(ports, _env(home))
        reachable = sorted(p for p, state in reach.items() if state == "open")
        knocked = other_host.knock(reachable, _env(home))
        answers = {p: how for p, (verdict, how) in knocked.items() if verdict != "refuses"}
        print(f"\nhead on {other_host.host_ip}: {len(sockets)} listening sockets on "
              f"{len(ports)} ports; tried from {other_host.peer_ip}: {len(reachable)} "
              f"reachable, {len(reachable) - len(answers)} refuse a client without the "
              f"token, answering without it: {answers}")
        for port, (verdict, how) in sorted(knocked.items()):
            print(f"  {port:5d} {verdict:8s} {how:60s} "
                  f"{sorted({n for _, p, n in sockets if p == port})}")
        # Ray's Prometheus metrics (read-only) are served to anyone: Ray 2.60 binds them
        # (the agent's port, and the dashboard's and autoscaler's fixed 44227 and 44217) to
        # all interfaces on a node whose IP is not loopback, with no setting to change it
        assert all("Prometheus metrics only" in how for how in answers.values()), answers

        folder = tmp_path / "job"
        folder.mkdir()
        (folder / "job.yaml").write_text(yaml.safe_dump(tiny_job(folder, name="from-afar")))
        refused = _submit(other_host, head, folder, home)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert "wants a token" in lines[-1] and "RAY_AUTH_TOKEN" in lines[-1], lines
        assert not [ln for ln in lines if "error" in ln and ln != lines[-1]]
        wrong = _submit(other_host, head, folder, home, RAY_AUTH_TOKEN="0" * 64)
        assert wrong.returncode == 2 and "refused the token" in wrong.stderr, wrong.stderr

        done = _submit(other_host, head, folder, home, RAY_AUTH_TOKEN=head.token)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().splitlines()[-1]
        assert job_id.startswith("slimtune-from-afar-")
        with_token = _env(home, RAY_AUTH_TOKEN=head.token)
        listed = other_host.run([*SLIMTUNE, "list", "--address", head.address], with_token)
        assert listed.returncode == 0 and listed.stdout.count("slimtune-from-afar-") == 1
        no_token = other_host.run([*SLIMTUNE, "status", job_id, "--address", head.address],
                                  _env(home))
        assert no_token.returncode == 2 and "RAY_AUTH_TOKEN" in no_token.stderr
        stopped = other_host.run([*SLIMTUNE, "stop", job_id, "--address", head.address,
                                  "--wait", "30"], with_token, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        print(f"submit from {other_host.peer_ip}: without token exit {refused.returncode}, "
              f"wrong token exit {wrong.returncode}, with token exit {done.returncode} "
              f"({job_id}, stopped: {stopped.stdout.strip()})")
    finally:
        head.stop()
