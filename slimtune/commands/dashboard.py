"""``slimtune dashboard DIR``: Optuna's dashboard on a job's study (``DIR/study.db``).

optuna-dashboard shows what MLflow does not: Optuna's own Pareto-front plot of the study,
the history of each objective, and parameter importances (which layers' prune ratios and
bit-widths matter). It is an optional extra (``pip install 'slimtune[dashboard]'``) and
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from slimtune.errors import UserInputError
from slimtune.resume import STUDY_FILE

NAME = "dashboard"
HELP = "open optuna-dashboard on a job's Optuna study (DIR/study.db)"
ORDER = 45


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="output directory of a job (holds study.db)")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")


def study_storage(out_dir: Path) -> str:
    """The SQLite URL of the job's study; one-line error if there is none."""
    db = out_dir / STUDY_FILE
    if not db.is_file():
        raise UserInputError(f"{out_dir}: no {STUDY_FILE} (tpe, nsga2 and random jobs with "
                             "the default search.storage keep their Optuna study there)")
    return f"sqlite:///{db.resolve()}"


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UserInputError(f"--port {args.port}: must be in 1..65535")
    storage = study_storage(args.dir)
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UserInputError("optuna-dashboard is not installed: pip install "
                             "'slimtune[dashboard]' (or pip install optuna-dashboard)")
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on {storage}: http://127.0.0.1:{args.port}/  (Ctrl-C to stop)",
          flush=True)
    run_server(storage, host="127.0.0.1", port=args.port)
    return 0
