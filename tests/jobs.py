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
        "search": {"searcher": "random", "trials": 3, "seed": 0, "evaluator": "finetune"},
        "space": {"prune_ratios": [0.0, 0.25, 0.5], "bits": [32, 8], "round_to": 1},
        # a tiny net after 4 epochs can sit near chance: these jobs test the mechanics, so
        # they search anyway (tests/test_chance.py turns the refusal back on)
        "baseline": {"epochs": 4, "batch_size": 64, "allow_chance": True},
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


def tiny_trial_context(tmp: Path, protocol=None):
    """A TrialContext for ``tiny_job``: untrained tiny ResNet on synthetic data, a 100 ms
    budget, a quick latency protocol unless one is given."""
    from slimtune.data import load_dataset
    from slimtune.layers import build_layer_table
    from slimtune.measurement.latency import MeasureProtocol
    from slimtune.models import build_builtin
    from slimtune.spec import parse_spec
    from slimtune.trial import TrialContext

    spec = parse_spec(tiny_job(tmp))
    data = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, data.input_shape, round_to=1)
    return TrialContext(spec=spec, table=table, baseline_state=model.state_dict(), data=data,
                        budget_ms=100.0, trials_dir=tmp / "trials",
                        protocol=protocol or MeasureProtocol(warmup=2, rounds=2, repeats=5))
