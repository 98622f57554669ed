"""``slimtune export DIR --out OUT``: copy a trial's compressed model out of a job."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slimtune.errors import UserInputError

NAME = "export"
HELP = "write a trial's compressed model"
ORDER = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="output directory of a job")
    p.add_argument("--trial", type=int, help="trial id (default: the best feasible trial)")
    p.add_argument("--out", required=True, type=Path, help="directory to write into")


def run(args: argparse.Namespace) -> int:
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
