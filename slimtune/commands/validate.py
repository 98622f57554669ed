"""``slimtune validate JOB``: check a spec, its model and its data without compute."""

from __future__ import annotations

import argparse

NAME = "validate"
HELP = "check a job spec, its model and its data"
ORDER = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file, or a built-in job name")


def run(args: argparse.Namespace) -> int:
    from slimtune.spec import load_spec
    from slimtune.validate import validate_job

    print(validate_job(load_spec(args.job)))
    return 0
