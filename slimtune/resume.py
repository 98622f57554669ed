"""What a job keeps in its output directory so that ``slimtune run --resume`` can go on.

```
DIR/state.json            parent MLflow run id, Optuna storage + study name, the baseline's
                          figures (so a resumed job keeps the same budget)
DIR/study.db              the Optuna study (default storage; ``search.storage`` overrides)
DIR/trials.jsonl          finished trials: neither lost nor repeated by a resume
DIR/mlflow-pending.jsonl  MLflow records not yet written (server unreachable), replayed
```

A resume checks the spec is the one in ``DIR/job.yaml``, reads the finished trials,
closes the MLflow runs the stop left RUNNING (KILLED, or FINISHED with their results when
the trial had finished), continues the Optuna study (interrupted trials run again) or
replays any other searcher skipping what finished, and numbers new trials with the ids
not yet used.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slimtune.errors import UserInputError
from slimtune.policy import write_text_atomic
from slimtune.preflight import uses_scoring
from slimtune.result import TrialResult
from slimtune.results.outputs import read_trials, write_json
from slimtune.spec import JobSpec

STATE_FILE = "state.json"
#: the Optuna study's file under the default storage (``slimtune dashboard`` reads it)
STUDY_FILE = "study.db"


def read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserInputError(f"{path}: corrupt (not JSON); cannot resume") from None


def write_state(out_dir: Path, **values: Any) -> dict[str, Any]:
    state = {**read_state(out_dir), **values}
    write_json(out_dir / STATE_FILE, state)
    return state


def check_resume(out_dir: Path, spec: JobSpec) -> None:
    """Before compute: ``out_dir`` holds a stopped job of this very spec."""
    saved = out_dir / "job.yaml"
    if not saved.is_file():
        raise UserInputError(f"--resume: {out_dir} holds no job to resume (no job.yaml); "
                             "run without --resume")
    if saved.read_text() != spec.to_yaml():
        raise UserInputError(f"--resume: the spec differs from the one the job in {out_dir} "
                             f"ran ({saved}); resume with that spec")
    read_state(out_dir)
    if (out_dir / "trials.jsonl").is_file():
        read_finished(out_dir)


def read_finished(out_dir: Path) -> list[TrialResult]:
    """The finished trials of a stopped job (a torn last line from a crash is dropped)."""
    path = out_dir / "trials.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # the crash cut the last write
        write_text_atomic(path, "".join(lines[:-1]))
    try:
        results = read_trials(out_dir)
    except (ValueError, KeyError, TypeError):
        raise UserInputError(f"{path}: corrupt; cannot resume") from None
    by_id = {r.trial_id: r for r in results}  # a trial written twice counts once
    return [by_id[i] for i in sorted(by_id)]


def new_study(spec: JobSpec, out_dir: Path) -> tuple[Any, str]:
    """(storage, study_name) for a fresh job: unique name, derived from the job's.

    A scoring search (``search.evaluator`` other than ``finetune``: never resumed) with
    the default storage keeps its study in memory and :func:`save_study` writes
    ``DIR/study.db`` when the search ends: SQLite cost about 0.22 s an ask with the
    quickstart's 34 parameters (0.01 s in memory), 36 s of its 160 candidates, where
    writing the study once takes about 11 s."""
    name = f"{spec.name}-{uuid.uuid4().hex[:12]}"
    if spec.search.storage is None and uses_scoring(spec):
        import optuna

        return optuna.storages.InMemoryStorage(), name
    return spec.search.storage or f"sqlite:///{out_dir / STUDY_FILE}", name


def save_study(storage: Any, study_name: str, out_dir: Path) -> None:
    """Write a study kept in memory (:func:`new_study`) to ``DIR/study.db``; a study in
    RDB storage is there already, and a searcher that is not Optuna's has none."""
    import optuna

    if not isinstance(storage, optuna.storages.InMemoryStorage):
        return
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return
    path = out_dir / STUDY_FILE
    path.unlink(missing_ok=True)
    optuna.copy_study(from_study_name=study_name, from_storage=storage,
                      to_storage=f"sqlite:///{path}", to_study_name=study_name)


def free_ids(used: Iterable[int], count: int) -> list[int]:
    """The ``count`` smallest trial ids not in ``used``."""
    taken, ids, i = set(used), [], 0
    while len(ids) < count:
        if i not in taken:
            ids.append(i)
        i += 1
    return ids


def clear_unfinished(out_dir: Path, finished: Iterable[TrialResult]) -> None:
    """Remove ``trials/ID`` folders of trials that did not finish (re-run from scratch)."""
    keep = {str(r.trial_id) for r in finished}
    trials = out_dir / "trials"
    if not trials.is_dir():
        return
    for path in trials.iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)


def sync_or_stop(tracker, out_dir: Path) -> None:
    """Write every journalled MLflow record, retrying for ``$SLIMTUNE_MLFLOW_SYNC_S``
    seconds (default 60); then fix placeholder run ids in the output files. Raises
    TrackingUnavailable (the job is not reported a success) if MLflow stays away."""
    import os
    import time

    from slimtune.results.tracking import TrackingUnavailable

    deadline = time.monotonic() + float(os.environ.get("SLIMTUNE_MLFLOW_SYNC_S", "60"))
    while not tracker.sync():
        if time.monotonic() > deadline:
            raise TrackingUnavailable(
                f"MLflow at {tracker.uri} is unreachable: {len(tracker._queue)} records kept "
                f"in {tracker.pending}; the outputs in {out_dir} are complete. When it is "
                f"back, run the same `slimtune run ... --out {out_dir} --resume` to sync them")
        time.sleep(2.0)
    replace_placeholders(out_dir, tracker.run_ids)


def replace_placeholders(out_dir: Path, run_ids: dict[str, str]) -> None:
    """Put real MLflow run ids where placeholders were written while MLflow was away."""
    if not run_ids:
        return
    for name in ("trials.jsonl", "pareto.json", STATE_FILE):
        path = out_dir / name
        if not path.is_file():
            continue
        text = original = path.read_text()
        for placeholder, real in run_ids.items():
            text = text.replace(placeholder, real)
        if text != original:
            write_text_atomic(path, text)
