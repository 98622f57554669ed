"""``slimtune list``: the jobs of a Ray cluster, oldest first."""

from __future__ import annotations

import argparse
import time

NAME = "list"
HELP = "list the jobs submitted to a Ray cluster"
ORDER = 44


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the Ray dashboard URL (default: $RAY_ADDRESS)")


def run(args: argparse.Namespace) -> int:
    from slimtune.cluster import list_jobs

    rows = list_jobs(args.address)
    print(f"{'id':40s} {'state':10s} {'started':19s} entrypoint")
    for r in rows:
        started = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_time"] / 1000))
                   if r["start_time"] else "-")
        print(f"{r['id']:40s} {r['state']:10s} {started:19s} {r['entrypoint']}")
    return 0
