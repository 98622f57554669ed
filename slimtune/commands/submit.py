"""``slimtune submit JOB --address http://HEAD:8265``: run a job on a Ray cluster.

The spec is validated here first (bad input: one line, exit 2, nothing sent). The job's
working directory (default: the spec's folder) is shipped with it; on the cluster the
job runs ``slimtune run`` with ``--address auto``. The job id is the last line printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "submit"
HELP = "submit a job to a Ray cluster (Ray Job Submission API)"
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file, or a built-in job name (quickstart)")
    p.add_argument("--address", help="the Ray dashboard URL, e.g. http://HEAD:8265 "
                                     "(default: $RAY_ADDRESS)")
    p.add_argument("--out", help="output directory on the cluster (default: runs/NAME inside "
                                 "the job's working directory; absolute: shared storage)")
    p.add_argument("--working-dir", type=Path,
                   help="folder shipped with the job (default: the spec's folder)")


def run(args: argparse.Namespace) -> int:
    from slimtune.cluster import submit_job

    plan = submit_job(args.address, args.job, out=args.out, working_dir=args.working_dir)
    print(f"slimtune: submitted {args.job} (working dir {plan.working_dir}); on the cluster: "
          f"{plan.entrypoint}", file=sys.stderr)
    print(f"slimtune: results: MLflow {plan.tracking_uri}; outputs {plan.out} on the cluster; "
          f"follow with `slimtune logs {plan.job_id} --follow`", file=sys.stderr)
    print(plan.job_id, flush=True)
    return 0
