"""Starting and stopping Ray for a job: joining a cluster, or a local Ray on loopback.

A local Ray started here stays up for the rest of the process and the next job in it
reuses it (Ray shuts it down at exit): a restart costs seconds, and Ray's own threads of
an old session can outlive ``ray.shutdown`` (ray-project/ray#31145; one native thread
more per restart here). Ray workers of a kept Ray were started with the environment of
the first job, so each job's workers adopt the driver's ``SLIMTUNE_*`` and ``MLFLOW_*``
variables (:func:`driver_env`, :func:`adopt_env`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["adopt_env", "driver_env", "start_ray", "stop_ray"]

_ENV_PREFIXES = ("SLIMTUNE_", "MLFLOW_")
# what this module started: "local", a cluster address it joined, or None (Ray is not
# running, or someone else's ray.init is in charge)
_started: str | None = None


def start_ray(address: str | None = None, *, num_cpus: int | None = None,
              verbose: bool = False) -> None:
    """Connect to a cluster at ``address``, or start a local Ray bound to 127.0.0.1.

    The local Ray listens on loopback only (``security.local_ray_on_loopback``) with
    Ray's token authentication on (Ray's default for a local ``ray.init``); its token
    file, when this call causes it to be written, is readable by its owner only.
    """
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    # Ctrl-C must stop the job (KeyboardInterrupt, MLflow runs closed as KILLED), not make
    # Tune end the search quietly and let the job report a short search as a success.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    global _started
    if ray.is_initialized():
        wanted = address or os.environ.get("RAY_ADDRESS") or "local"
        if _started is None or _started == wanted or (
                _started == "local" and wanted.startswith(("http://", "https://"))):
            return  # someone else's Ray, or the one this process already runs
        stop_ray(force=True)  # another cluster asked for: the rare restart
    level = logging.INFO if verbose else logging.ERROR
    env_address = os.environ.get("RAY_ADDRESS", "")
    if env_address.startswith(("http://", "https://")):
        # a dashboard URL for `slimtune submit`; ray.init would read it as a cluster to join
        del os.environ["RAY_ADDRESS"]
    elif not address and env_address:
        address = env_address  # Ray's convention (set inside a submitted job, too)
    # ray.init replaces the SIGTERM handler with sys.exit: keep the caller's (`slimtune
    # run` stops on SIGTERM like on Ctrl-C, closing its MLflow runs as KILLED)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        from slimtune.security import warn_if_exposed_ray

        warn_if_exposed_ray(address)
        ray.init(address=address, logging_level=level, log_to_driver=verbose)
        _started = address
    else:
        from slimtune.security import (
            default_token_path,
            local_ray_on_loopback,
            make_owner_only,
            private_ray_token,
        )

        token_existed = default_token_path().is_file()
        private_ray_token()  # the token Ray would write 0644, written 0600 first
        # address="local": always a fresh Ray for this job, even when another Ray cluster
        # (someone's `ray start`) runs on this machine; every port on 127.0.0.1
        with local_ray_on_loopback():
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=level, log_to_driver=verbose)
        _started = "local"
        if not token_existed:  # written by Ray after all (a race, or another Ray's way)
            make_owner_only(default_token_path())
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def stop_ray(*, force: bool = False) -> None:
    """End this module's connection to a cluster; a local Ray it started is kept for the
    next job in this process unless ``force``. Someone else's Ray is left alone."""
    import ray

    global _started
    if _started is None or (_started == "local" and not force):
        return
    if ray.is_initialized():
        ray.shutdown()
    _started = None


def driver_env() -> dict[str, str] | None:
    """The driver's ``SLIMTUNE_*`` and ``MLFLOW_*`` variables, for the workers of a local
    Ray (None on a cluster: its workers keep their own environment)."""
    if _started != "local":
        return None
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def adopt_env(env: dict[str, str] | None) -> None:
    """In a worker: take the driver's variables (``driver_env``), dropping any of those
    prefixes an earlier job set in this worker. ``None`` changes nothing."""
    if env is None:
        return
    for key in [k for k in os.environ if k.startswith(_ENV_PREFIXES) and k not in env]:
        del os.environ[key]
    os.environ.update(env)
