"""``slimtune export DIR --out OUT``: copy a trial's compressed model out of a job.

``DIR`` may also be a model registry URI (``models:/NAME/VERSION``, ``models:/NAME@best``):
the registered model's ``model.onnx`` and the trial files logged with it are written
(``--tracking-uri``, default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``).

``--format compressed`` writes one Deep Compression container file instead
(``slimtune.deep_compression``: sparse, shared weights, Huffman-coded, SHA-256 checked)
with the trial policy's per-layer sparsity and clusters, or ``--sparsity``/``--clusters``
for every layer the policy leaves unset; ``slimtune load`` reads it back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slimtune.errors import UserInputError

NAME = "export"
HELP = "write a trial's compressed model"
ORDER = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output directory of a job, or a registry URI "
                   "models:/NAME/VERSION (or models:/NAME@best)")
    p.add_argument("--tracking-uri", help="with a registry URI: the MLflow store "
                   "(default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    p.add_argument("--trial", type=int, help="trial id (default: the best feasible trial)")
    p.add_argument("--out", required=True, type=Path,
                   help="directory to write into (--format compressed: the file to write)")
    p.add_argument("--format", choices=("onnx", "compressed"), default="onnx",
                   help="onnx (default): policy.json, model.onnx, model.pt; compressed: one "
                        "Deep Compression file")
    p.add_argument("--sparsity", type=float,
                   help="with --format compressed: fraction of weights zeroed by magnitude "
                        "in every layer the policy leaves unset, in [0, 1)")
    p.add_argument("--clusters", type=int,
                   help="with --format compressed: shared weight values per layer the policy "
                        "leaves unset, 2..256")


def run(args: argparse.Namespace) -> int:
    from slimtune.results.outputs import copy_trial
    from slimtune.results.registry import is_registry_uri

    if is_registry_uri(args.dir):
        return _export_registered(args)
    if args.tracking_uri is not None:
        raise UserInputError("--tracking-uri goes with a models:/ registry URI")
    args.dir = Path(args.dir)
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
    if args.format == "compressed":
        return _export_compressed(args, trial)
    if args.sparsity is not None or args.clusters is not None:
        raise UserInputError("--sparsity and --clusters go with --format compressed")
    for path in copy_trial(args.dir, trial, args.out):
        print(path)
    return 0


def _export_registered(args: argparse.Namespace) -> int:
    import os

    from slimtune.results.registry import export_registered
    from slimtune.results.tracking import check_tracking_uri, sqlite_path

    if args.trial is not None or args.format != "onnx":
        raise UserInputError("a registry URI names one model: --trial and --format "
                             "compressed go with a job's output directory")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    check_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise UserInputError(f"no MLflow store at {db} (pass --tracking-uri)")
    for path in export_registered(args.dir, uri, args.out):
        print(path)
    return 0


def _export_compressed(args: argparse.Namespace, trial: int) -> int:
    from slimtune.compressed_file import write_compressed
    from slimtune.deep_compression import with_uniform
    from slimtune.policy import MAX_CLUSTERS, MIN_CLUSTERS
    from slimtune.trial_model import load_trial

    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UserInputError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.clusters is not None and not MIN_CLUSTERS <= args.clusters <= MAX_CLUSTERS:
        raise UserInputError(f"--clusters must be in [{MIN_CLUSTERS}, {MAX_CLUSTERS}], "
                             f"got {args.clusters}")
    model_pt = args.dir / "trials" / str(trial) / "model.pt"
    if not model_pt.is_file():
        raise UserInputError(f"trial {trial} has no saved model.pt in {args.dir}")
    model, table, policy = load_trial(model_pt)
    try:
        policy = with_uniform(policy, table, sparsity=args.sparsity, clusters=args.clusters)
    except ValueError as err:
        raise UserInputError(str(err)) from None
    out = args.out / "model.stdc" if args.out.is_dir() else args.out
    size = write_compressed(model, table, policy, out)
    print(f"{out}  ({size} bytes)")
    return 0
