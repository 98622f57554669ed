"""Safe-by-default checks: warn before talking to an exposed service without auth,
and keep paths a job writes inside the directory they belong to.

Ray and MLflow, as slimtune starts them, listen on 127.0.0.1 only. When a user points
slimtune at (or binds) another interface, nothing stops them, but a warning says what is
missing: Ray token authentication (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` or a
token file) for Ray, MLflow credentials (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN``) for a tracking server.
"""

from __future__ import annotations

import ipaddress
import os
import sys
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
