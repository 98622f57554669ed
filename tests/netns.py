"""Another host for tests: a network namespace joined to this one by a veth pair.

This host gets ``HOST_IP`` on its end of the pair, the namespace ``PEER_IP`` on the
other; nothing else is routed, so a client in the namespace reaches this machine only
through the veth address, as a machine on the LAN would. Needs root and iproute2
(``make data`` installs it when run as root); ``unavailable()`` says why not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

PROBE = r"""
import json, socket, sys
host, ports = sys.argv[1], json.loads(sys.argv[2])
out = {}
for port in ports:
    try:
        socket.create_connection((host, port), timeout=2).close()
        out[port] = "open"
    except ConnectionRefusedError:
        out[port] = "refused"
    except OSError as err:
        out[port] = type(err).__name__
print(json.dumps(out))
"""

# What a client without the token gets from an open port: an HTTP request first, then a
# read-only call of each Ray gRPC service (empty request; the first one the server
# knows answers). "refuses" = 401/403 or UNAUTHENTICATED; "answers" = anything else.
KNOCK = r"""
import http.client, json, sys
import grpc
host, ports = sys.argv[1], json.loads(sys.argv[2])
METHODS = ["/ray.rpc.NodeInfoGcsService/GetClusterId", "/ray.rpc.NodeManagerService/GetNodeStats",
           "/ray.rpc.ObjectManagerService/Pull", "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
           "/ray.rpc.ReporterService/HealthCheck", "/ray.rpc.LogService/ListLogs",
           "/ray.rpc.RayletDriver/ClusterInfo"]
out = {}
for port in ports:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/api/version")
        response = conn.getresponse()
        status, body = response.status, response.read(65536)
        # a Prometheus exposition (any path of prometheus_client's server) is read-only
        metrics = b"# HELP" in body or b"# TYPE" in body
        if status == 200 and not metrics:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read(65536)
            metrics = b"# HELP" in body or b"# TYPE" in body
        out[port] = ["refuses" if status in (401, 403) else "answers",
                     f"HTTP {status}" + (" (Prometheus metrics only)" if metrics else "")]
        continue
    except (http.client.HTTPException, OSError):
        pass
    out[port] = ["unknown", "no HTTP, no known gRPC service"]
    channel = grpc.insecure_channel(f"{host}:{port}")
    for method in METHODS:
        call = channel.unary_unary(method, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            call(b"", timeout=5)
            out[port] = ["answers", f"gRPC {method} OK"]
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                continue
            verdict = "refuses" if code == grpc.StatusCode.UNAUTHENTICATED else "answers"
            out[port] = [verdict, f"gRPC {method} {code.name}"]
        break
    channel.close()
print(json.dumps(out))
"""


def unavailable() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed (make data installs it as root)"
    probe = f"slimtune-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        return f"network namespaces are not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


class OtherHost:
    """``with OtherHost() as other:`` ``other.run([...])`` runs a command over there."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name = f"slimtune-{os.getpid()}"
        self.host_if, self.peer_if = f"sth{os.getpid()}"[:15], f"stp{os.getpid()}"[:15]
        self.host_ip, self.peer_ip = f"10.213.{n}.1", f"10.213.{n}.2"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def __enter__(self) -> OtherHost:
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            self._ip("link", "set", self.peer_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            for args in (("addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if),
                         ("link", "set", self.peer_if, "up"), ("link", "set", "lo", "up")):
                self._ip("netns", "exec", self.name, "ip", *args)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def run(self, cmd: list[str], env: dict[str, str], timeout: float = 120,
            ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def connect(self, ports: list[int], env: dict[str, str]) -> dict[int, str]:
        """Each port of this host's veth address, tried from over there: open, refused..."""
        done = self.run([sys.executable, "-c", PROBE, self.host_ip, json.dumps(ports)], env,
                        timeout=30 + 3 * len(ports))
        assert done.returncode == 0, done.stderr
        return {int(k): v for k, v in json.loads(done.stdout).items()}

    def knock(self, ports: list[int], env: dict[str, str]) -> dict[int, tuple[str, str]]:
        """Each open port asked, with no token, for something: (refuses|answers|unknown, how)."""
        done = self.run([sys.executable, "-c", KNOCK, self.host_ip, json.dumps(ports)], env,
                        timeout=60 + 40 * len(ports))
        assert done.returncode == 0, done.stderr
        return {int(k): tuple(v) for k, v in json.loads(done.stdout).items()}
