"""What a finished job hands back (``slimtune.job.run_job``'s return value)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimtune.result import TrialResult


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: its rows, front, best, baseline figures, budget and timings."""

    out_dir: Path
    results: list[TrialResult]
    front: list[TrialResult]
    best: TrialResult | None
    baseline: dict
    budget_ms: float
    hypervolume: float
    tracking_uri: str
    parent_run_id: str
    wall_seconds: float
    search_seconds: float  # Ray start to Ray shutdown
    trial_seconds: float  # the sum of the trials' own time inside their workers
