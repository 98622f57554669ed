"""Starting and stopping Ray for a job: joining a cluster, or a local Ray on loopback."""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["start_ray", "stop_ray"]


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
    if ray.is_initialized():
        return
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
        if not token_existed:  # written by Ray after all (a race, or another Ray's way)
            make_owner_only(default_token_path())
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
