"""``slimtune run JOB --out DIR``: a compression search job."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from slimtune.errors import UserInputError

NAME = "run"
HELP = "run a compression search job"
ORDER = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file, or a built-in job name (quickstart)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--trials", type=int, help="override search.trials")
    p.add_argument("--searcher", help="override search.searcher (tpe|nsga2|random|uniform|ppo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier job in --out")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    p.add_argument("--verbose", action="store_true", help="show Ray and library logs")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped job in --out (same spec): finished trials are "
                        "kept, interrupted ones run again")


def run(args: argparse.Namespace) -> int:
    from slimtune.spec import load_spec

    spec = load_spec(args.job)
    if args.trials is not None and args.trials < 1:
        raise UserInputError("--trials must be at least 1")
    spec = spec.with_overrides(trials=args.trials, searcher=args.searcher)
    if args.resume and args.overwrite:
        raise UserInputError("--resume and --overwrite exclude each other")
    if not args.verbose:
        warnings.filterwarnings("ignore")
    from slimtune.job import run_job
    from slimtune.results.summary import failure_line, print_summary
    from slimtune.results.tracking import TrackingUnavailable

    # `slimtune stop` (Ray) and process managers send SIGTERM: stop like Ctrl-C, so every
    # MLflow run is closed as KILLED instead of being left RUNNING.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        outcome = run_job(spec, args.out, overwrite=args.overwrite, address=args.address,
                          verbose=args.verbose, resume=args.resume)
    except TrackingUnavailable as err:
        print(f"slimtune: error: {err}", file=sys.stderr)
        return err.exit_code
    print_summary(outcome)
    failure = failure_line(outcome)
    if failure is not None:  # a job whose every trial failed is not a success (exit 1)
        print(f"slimtune: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
