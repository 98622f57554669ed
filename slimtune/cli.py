"""The ``slimtune`` command line.

Bad input prints one line on stderr and exits 2 before any compute; Ctrl-C exits 130
with every MLflow run closed as KILLED.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from slimtune.errors import UserInputError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimtune",
        description="Search per-layer pruning and bit-widths under a latency budget "
                    "measured on the target; every trial in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a compression search job")
    run.add_argument("job", help="job spec YAML file, or a built-in job name (quickstart)")
    run.add_argument("--out", required=True, type=Path, help="output directory")
    run.add_argument("--trials", type=int, help="override search.trials")
    run.add_argument("--searcher", help="override search.searcher (tpe|nsga2|random|uniform)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the outputs of an earlier job in --out")
    run.add_argument("--address", help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    run.add_argument("--verbose", action="store_true", help="show Ray and library logs")

    val = sub.add_parser("validate", help="check a job spec, its model and its data")
    val.add_argument("job", help="job spec YAML file, or a built-in job name")

    exp = sub.add_parser("export", help="write a trial's compressed model")
    exp.add_argument("dir", type=Path, help="output directory of a job")
    exp.add_argument("--trial", type=int, help="trial id (default: the best feasible trial)")
    exp.add_argument("--out", required=True, type=Path, help="directory to write into")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserInputError as err:
        print(f"slimtune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("slimtune: interrupted; MLflow runs closed as KILLED", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from slimtune.spec import load_spec

    if args.command == "validate":
        from slimtune.validate import validate_job

        spec = load_spec(args.job)
        print(validate_job(spec))
        return 0
    if args.command == "export":
        return _export(args)
    spec = load_spec(args.job)
    if args.trials is not None and args.trials < 1:
        raise UserInputError("--trials must be at least 1")
    spec = spec.with_overrides(trials=args.trials, searcher=args.searcher)
    if not args.verbose:
        warnings.filterwarnings("ignore")
    from slimtune.job import run_job
    from slimtune.summary import print_summary

    outcome = run_job(spec, args.out, overwrite=args.overwrite, address=args.address,
                      verbose=args.verbose)
    print_summary(outcome)
    return 0


def _export(args: argparse.Namespace) -> int:
    import json

    from slimtune.outputs import copy_trial

    trial = args.trial
    if trial is None:
        pareto = args.dir / "pareto.json"
        if not pareto.is_file():
            raise UserInputError(f"{args.dir}: no pareto.json (is it a finished job's --out?)")
        trial = json.loads(pareto.read_text()).get("best_trial")
        if trial is None:
            raise UserInputError(f"{args.dir}: the job found no feasible trial")
    if not (args.dir / "trials.jsonl").is_file():
        raise UserInputError(f"{args.dir}: not a slimtune output directory (no trials.jsonl)")
    for path in copy_trial(args.dir, trial, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
