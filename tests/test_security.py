"""Ray token handling without a cluster: where the token comes from, what a refusal
says, the token file's mode, and the job commands against a small fake Job API that
wants a bearer token (loopback only)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slimtune import security

TOKEN = "f" * 64
RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home directory and no Ray variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in RAY_VARS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_token_source_follows_rays_order(home, monkeypatch):
    assert security.ray_token_source() is None
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    assert security.ray_token_source() == "~/.ray/auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "tok"))
    assert security.ray_token_source() == f"RAY_AUTH_TOKEN_PATH={home / 'tok'}"
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert security.ray_token_source() == "RAY_AUTH_TOKEN"


def test_a_refusal_says_what_to_set(home, monkeypatch):
    missing = ("AuthenticationError: Authentication required: Unauthorized: Missing "
               "authentication token")
    line = security.ray_auth_refusal("http://h:8265", missing)
    assert "\n" not in line and "http://h:8265" in line
    assert "RAY_AUTH_TOKEN" in line and "RAY_AUTH_TOKEN_PATH" in line
    assert "~/.ray/auth_token" in line
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    invalid = "Authentication failed: Forbidden: Invalid authentication token"
    line = security.ray_auth_refusal("http://h:8265", invalid)
    assert "refused the token from RAY_AUTH_TOKEN" in line
    assert security.ray_auth_refusal("http://h:8265", "Connection refused") is None


def test_the_token_slimtune_causes_is_owner_only(home, monkeypatch):
    path = security.private_ray_token()
    assert path == home / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text()) == 64
    assert security.private_ray_token() is None  # there already: left as it is
    path.chmod(0o644)
    security.make_owner_only(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_token_written_when_ray_would_write_none(home, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert security.private_ray_token() is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert security.private_ray_token() is None
    assert not (home / ".ray").exists()
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    (home / ".ray" / "auth_token").chmod(0o644)
    assert security.private_ray_token() is None
    assert "readable by other users (mode 0644): chmod 600" in capsys.readouterr().err


class _FakeJobApi(BaseHTTPRequestHandler):
    """Ray's dashboard as a client sees it: 401 without a bearer token, 403 with a
    wrong one (the texts Ray's middleware answers), else a version and no jobs."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        if not auth:
            self._send(401, "Unauthorized: Missing authentication token", "text/plain")
        elif auth != f"Bearer {TOKEN}":
            self._send(403, "Forbidden: Invalid authentication token", "text/plain")
        elif self.path.startswith("/api/version"):
            self._send(200, json.dumps({"version": "4", "ray_version": "2.60.0",
                                        "ray_commit": "x"}), "application/json")
        else:
            self._send(200, "[]", "application/json")

    def _send(self, code: int, body: str, kind: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def job_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJobApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeJobApi.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _list(address: str, home, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    clean.update(HOME=str(home), **env)
    return subprocess.run([sys.executable, "-m", "slimtune.cli", "list", "--address", address],
                          env=clean, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("where", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "default file"])
def test_job_commands_send_the_token_from_where_ray_reads_it(job_api, home, where):
    env = {}
    if where == "RAY_AUTH_TOKEN":
        env["RAY_AUTH_TOKEN"] = TOKEN
    elif where == "RAY_AUTH_TOKEN_PATH":
        (home / "tok").write_text(TOKEN + "\n")
        env["RAY_AUTH_TOKEN_PATH"] = str(home / "tok")
    else:
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(TOKEN)
    done = _list(job_api, home, **env)  # no RAY_AUTH_MODE: found all the same
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("id ")
    assert _FakeJobApi.seen and set(_FakeJobApi.seen) == {f"Bearer {TOKEN}"}


def test_job_commands_refused_say_which_variable_to_set(job_api, home):
    done = _list(job_api, home)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "wants a token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
    assert "~/.ray/auth_token" in lines[0]

    wrong = _list(job_api, home, RAY_AUTH_TOKEN="0" * 64)
    assert wrong.returncode == 2
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1, wrong.stderr
    assert "refused the token from RAY_AUTH_TOKEN" in lines[0]


def test_the_mlflow_ui_command_slimtune_prints_binds_to_loopback(tmp_path):
    from slimtune.results.tracking import ui_command

    command = ui_command(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert command.startswith("mlflow ui ") and "--host 127.0.0.1" in command.split(" --port")[0]


def test_loopback_mode_is_on_only_while_the_local_node_starts(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.delenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with security.local_ray_on_loopback():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "0"
        from ray._private.services import resolve_ip_for_localhost

        assert resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR not in os.environ
