"""Tiny job specs for tests: synthetic data, a tiny ResNet, seconds per trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def tiny_job(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": "tiny",
        "model": {"arch": "tiny_resnet"},
        "data": {"dataset": "synthetic"},
        "budget": {"latency_ms": 100.0},
        "target": {"runtime": "onnxruntime", "threads": 1, "batch_size": 1},
        "search": {"searcher": "random", "trials": 3, "seed": 0},
        "space": {"prune_ratios": [0.0, 0.25, 0.5], "bits": [32, 8], "round_to": 1},
        "baseline": {"epochs": 4, "batch_size": 64},
        "finetune": {"steps": 5, "batch_size": 32, "calibration_size": 16},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "experiment": "tiny"},
    }
    for key, value in overrides.items():
        if key not in ("model", "budget") and isinstance(value, dict) \
                and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


def write_job(tmp_path: Path, name: str = "job.yaml", **overrides: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **overrides)))
    return path
