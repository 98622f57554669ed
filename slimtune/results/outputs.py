"""The output directory of a job (a contract) and reading it back.

```
DIR/job.yaml            the spec as resolved (defaults filled in)
DIR/trials.jsonl        one JSON object a trial, appended as trials finish
DIR/pareto.json         the non-dominated feasible trials, plus baseline and budget
DIR/pareto.png          accuracy vs measured latency: the 2-D staircase, size-only front
                        points, over-budget/failed trials greyed, budget, baseline, references
DIR/pareto.html         the same chart, self-contained, with hover details and the front table
DIR/mlflow.json         the MLflow UI links and logged/registered models (slimtune.results.front)
DIR/best/               policy.json, model.onnx, model.pt of the best feasible trial
DIR/baseline/           the uncompressed model as deployed (model.onnx)
DIR/trials/ID/          each feasible trial's policy.json, model.onnx, model.pt
```
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from slimtune.errors import UserInputError
from slimtune.policy import write_text_atomic
from slimtune.result import TrialResult

TRIAL_FILES = ("policy.json", "model.onnx", "model.pt", "layers.json")


def append_trial(out_dir: Path, result: TrialResult) -> None:
    """Append one trial to ``trials.jsonl`` (flushed, so a crash loses nothing done)."""
    with open(out_dir / "trials.jsonl", "a") as f:
        f.write(json.dumps(result.to_dict(), sort_keys=True) + "\n")
        f.flush()


def read_trials(out_dir: Path) -> list[TrialResult]:
    path = out_dir / "trials.jsonl"
    if not path.is_file():
        raise UserInputError(f"{out_dir}: not a slimtune output directory (no trials.jsonl)")
    return [TrialResult.from_dict(json.loads(line))
            for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_trial(out_dir: Path, trial_id: int, dest: Path) -> list[Path]:
    """Copy a trial's policy and models into ``dest`` (created)."""
    src = out_dir / "trials" / str(trial_id)
    if not (src / "model.onnx").is_file() and not (src / "model.pt").is_file():
        known = sorted(int(p.name) for p in (out_dir / "trials").glob("*") if p.name.isdigit())
        raise UserInputError(f"trial {trial_id} has no saved model in {out_dir} (infeasible or "
                             f"failed trials are not kept; trials with models: {known})")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TRIAL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
            copied.append(dest / name)
    return copied


def load_compressed(path: Path) -> nn.Module:
    """Rebuild a compressed model (pruned, factorised) from a ``model.pt`` written by a
    trial: :func:`slimtune.deep_compression.load_trial` without the table and policy."""
    from slimtune.trial_model import load_trial

    return load_trial(path)[0]
