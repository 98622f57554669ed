"""Safe-by-default checks: warn before talking to an exposed service without auth,
keep a local Ray on loopback, keep Ray's token private, and keep paths a job writes
inside the directory they belong to.

Ray and MLflow, as slimtune starts them, listen on 127.0.0.1 only (``local_ray_on_loopback``
for Ray: Ray 2.60 otherwise replaces node IP 127.0.0.1 by the machine's address). The job
commands find Ray's token where Ray's own clients do (``RAY_AUTH_TOKEN``, then the file
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``). When a user points
slimtune at (or binds) another interface, nothing stops them, but a warning says what is
missing: Ray token authentication (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or a
token file) for Ray, MLflow credentials (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN``) for a tracking server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from slimtune.errors import UserInputError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def host_of(address: str) -> str | None:
    """The host of ``http://h:p``, ``h:p`` or ``ray://h:p``; None for ``auto`` or junk."""
    if not address or address == "auto":
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ray_token_auth_on() -> bool:
    """Whether this process would use Ray token authentication."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return True
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return False
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def default_token_path() -> Path:
    """Ray's default token file (``ray._private.authentication``'s default path)."""
    return Path.home() / ".ray" / "auth_token"


def ray_token_source() -> str | None:
    """Where Ray would read its token from, in Ray's order of precedence, or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    if default_token_path().is_file():
        return "~/.ray/auth_token"
    return None


def use_ray_token_if_available() -> bool:
    """Turn token auth on in this process when a token is available and RAY_AUTH_MODE
    is unset, as ``ray.init(address=...)`` and ``ray start`` do; a JobSubmissionClient
    alone sends a token only when ``RAY_AUTH_MODE=token``. Returns whether it is on."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if ray_token_source() is None:
        return False
    ray_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)  # its "enabled for this Ray cluster" note is for heads
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # a Ray without that helper: the variable it sets
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    finally:
        ray_logger.setLevel(level)


def ray_auth_refusal(url: str, error_text: str) -> str | None:
    """One line saying what to set, when ``error_text`` is a token refusal; else None."""
    text = error_text.lower()
    missing = "missing authentication token" in text or "authentication required" in text
    invalid = any(s in text for s in ("invalid authentication token", "authentication failed",
                                      "forbidden"))
    if not (missing or invalid):
        return None
    source = ray_token_source()
    at = f" at {url}" if url else ""
    if missing or source is None:
        return (f"the Ray cluster{at} wants a token (Ray token authentication) and none "
                "was sent: set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH "
                "to a file holding it, or put it in ~/.ray/auth_token (mode 600)")
    return (f"the Ray cluster{at} refused the token from {source}: set RAY_AUTH_TOKEN "
            "(it wins over RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token) to the token the "
            "cluster was started with")


def readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def private_ray_token() -> Path | None:
    """Before a local ``ray.init``: when Ray would generate a token into
    ``~/.ray/auth_token`` (token auth on by default, no token anywhere), write one there
    first, mode 0600 in a 0700 folder (Ray would write it 0644). Returns the file it
    wrote, or None; warns when an existing default token file is readable by others."""
    path = default_token_path()
    if path.is_file():
        if readable_by_others(path):
            _warn(f"{path} (Ray's token) is readable by other users "
                  f"(mode {stat.S_IMODE(path.stat().st_mode):04o}): chmod 600 it")
        return None
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or ray_token_source():
        return None
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: its file, its mode
        return None
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    return path


def make_owner_only(path: Path) -> None:
    """chmod 600 a file slimtune caused to be written (Ray's token, when Ray wrote it)."""
    if path.is_file() and readable_by_others(path):
        path.chmod(0o600)


@contextlib.contextmanager
def local_ray_on_loopback() -> Iterator[None]:
    """While a local ``ray.init`` starts its processes: node IP 127.0.0.1 for real.

    ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the machine's address
    (``services.resolve_ip_for_localhost``) unless ``ray_constants.ENABLE_RAY_CLUSTER``
    is off, which is what Ray does on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``).
    With it off, the GCS, raylet, object manager, workers, driver, dashboard (head and
    agent), runtime-env agent and autoscaler monitor all listen on 127.0.0.1. It is set
    for the processes Ray starts (the environment) and for this one (the constant, read
    at call time) only while the node starts; a later ``ray.init(address=...)`` in this
    process sees Ray's own default again.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def mlflow_auth_on() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_TOKEN")
                or (os.environ.get("MLFLOW_TRACKING_USERNAME")
                    and os.environ.get("MLFLOW_TRACKING_PASSWORD")))


def _warn(message: str) -> None:
    print(f"slimtune: warning: {message}", file=sys.stderr, flush=True)


def warn_if_exposed_ray(address: str) -> bool:
    """Warn (and return True) for a non-loopback Ray address without token auth."""
    host = host_of(address)
    if host is None or is_loopback(host) or ray_token_auth_on():
        return False
    unspecified = host in ("0.0.0.0", "::")
    _warn(f"Ray at {host} is reachable beyond this host"
          f"{' (all interfaces)' if unspecified else ''} and Ray token authentication is "
          "off: anyone who can reach it can run code on the cluster. Set RAY_AUTH_MODE=token "
          "and RAY_AUTH_TOKEN on every node and client (see docs/cluster.md)")
    return True


def warn_if_exposed_mlflow(uri: str) -> bool:
    """Warn (and return True) for an http tracking server off this host without credentials."""
    if not uri.startswith(("http://", "https://")):
        return False
    host = host_of(uri)
    if host is None or is_loopback(host) or mlflow_auth_on():
        return False
    _warn(f"MLflow tracking server {host} is not on this host and no credentials are set "
          "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN); "
          "run it with authentication (mlflow server --app-name basic-auth) behind TLS")
    return True


def confined(relative: str, what: str) -> PurePosixPath:
    """A relative path that stays inside the directory it is relative to (no ``..``)."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UserInputError(f"{what} {relative!r}: must be a relative path inside the "
                             "directory (no '..', not absolute)")
    return path
