"""``slimtune status ID``: the state of a submitted job (its last line)."""

from __future__ import annotations

import argparse
import sys

NAME = "status"
HELP = "the state of a submitted job: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED"
ORDER = 41


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", help="the id `slimtune submit` printed")
    p.add_argument("--address", help="the Ray dashboard URL (default: $RAY_ADDRESS)")


def run(args: argparse.Namespace) -> int:
    from slimtune.cluster import job_status

    state, message = job_status(args.address, args.job_id)
    if message:
        print(f"slimtune: {args.job_id}: {message}", file=sys.stderr)
    print(state, flush=True)
    return 0
