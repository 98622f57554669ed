"""``slimtune report DIR --out report.html``: the behaviour report of a finished job.

The baseline against the chosen trial(s) (default: the best feasible trial): every
behaviour metric, per-class accuracy, reliability diagrams, saliency maps; one
self-contained HTML file, also attached to the job's MLflow parent run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimtune.errors import UserInputError

NAME = "report"
HELP = "write the behaviour report (HTML) of a job"
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="output directory of a job")
    p.add_argument("--trial", type=int, action="append",
                   help="trial id to show (repeatable; default: the best feasible trial)")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--no-mlflow", action="store_true",
                   help="do not attach the report to the job's MLflow parent run")


def run(args: argparse.Namespace) -> int:
    if not (args.dir / "trials.jsonl").is_file():
        raise UserInputError(f"{args.dir}: not a slimtune output directory (no trials.jsonl)")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UserInputError(f"--out {args.out}: the report is HTML; name it *.html")
    if not args.out.parent.resolve().is_dir():
        raise UserInputError(f"--out {args.out}: directory {args.out.parent} does not exist")
    from slimtune.results.report import write_report

    path = write_report(args.dir, args.out, args.trial)
    print(path)
    if not args.no_mlflow:
        _attach(args.dir, path)
    return 0


def _attach(out_dir: Path, path: Path) -> None:
    """Log the report on the parent run named in ``pareto.json``; a warning if it can't."""
    info = json.loads((out_dir / "pareto.json").read_text())
    run_id, uri = info.get("mlflow_parent_run_id"), info.get("tracking_uri")
    if not run_id or not uri:
        print("slimtune: warning: pareto.json names no MLflow run; report not attached",
              file=sys.stderr)
        return
    try:
        from slimtune.results.tracking import _quiet_mlflow

        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path))
    except Exception as err:  # noqa: BLE001 - the report itself is written
        print(f"slimtune: warning: report not attached to MLflow run {run_id}: {err}",
              file=sys.stderr)
        return
    print(f"attached to MLflow run {run_id} ({uri})")
