"""``slimtune logs ID [--follow]``: the driver log of a submitted job."""

from __future__ import annotations

import argparse
import sys

NAME = "logs"
HELP = "print (or --follow) the log of a submitted job"
ORDER = 42


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", help="the id `slimtune submit` printed")
    p.add_argument("--address", help="the Ray dashboard URL (default: $RAY_ADDRESS)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing until the job ends")


def run(args: argparse.Namespace) -> int:
    from slimtune.cluster import follow_logs, job_logs

    if args.follow:
        follow_logs(args.address, args.job_id)
    else:
        sys.stdout.write(job_logs(args.address, args.job_id))
        sys.stdout.flush()
    return 0
