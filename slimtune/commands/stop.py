"""``slimtune stop ID``: stop a submitted job and wait until it has stopped.

Ray sends the job's driver SIGTERM; ``slimtune run`` closes its MLflow runs as KILLED
and exits (Ray waits up to ``cluster.STOP_GRACE_S`` before SIGKILL). Resume it later
with ``slimtune run SPEC --out DIR --resume`` on the cluster.
"""

from __future__ import annotations

import argparse

NAME = "stop"
HELP = "stop a submitted job (its state on the last line)"
ORDER = 43


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", help="the id `slimtune submit` printed")
    p.add_argument("--address", help="the Ray dashboard URL (default: $RAY_ADDRESS)")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the job to stop (default 60)")


def run(args: argparse.Namespace) -> int:
    from slimtune.cluster import stop_job

    print(stop_job(args.address, args.job_id, wait_s=args.wait), flush=True)
    return 0
