"""A finished fake job for the front tests: trial rows of known shape, their MLflow runs in
a SQLite store, a tiny ONNX model per front trial, then ``publish_front``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from slimtune.export import export_onnx
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.front import publish_front
from slimtune.results.pareto import pareto_front
from slimtune.results.tracking import Tracker
from slimtune.spec import parse_spec
from tests.jobs import tiny_job

INPUT = (1, 8, 8)
INT8 = Policy(bits={"a": 8, "b": 8})
HALF = Policy(prune={"g1": 0.5, "g2": 0.5})
MIXED = Policy(prune={"g1": 0.25}, bits={"a": 8, "b": 32})


def row(i, acc, lat, size, state="ok", policy=MIXED, run=""):
    return TrialResult(trial_id=i, policy=policy, state=state, accuracy=acc, test_accuracy=acc,
                       latency_ms=lat, size_bytes=size, macs=1000, mlflow_run_id=run)


def rows():
    return [
        row(0, 0.90, 5.0, 300, policy=INT8),   # 2-D front, int8-only reference
        row(1, 0.85, 3.0, 200),                 # 2-D front
        row(2, 0.84, 4.0, 50),                  # front only through size
        row(3, 0.83, 4.5, 250, policy=HALF),    # dominated; uniform reference
        row(4, None, 9.0, None, "infeasible"),  # over budget, stopped before accuracy
        row(5, 0.70, 8.0, 100, "infeasible"),   # over budget with an accuracy
        row(6, None, None, None, "failed"),     # failed before a latency: not drawn
    ]


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def published_job(tmp: Path):
    """(dir, spec, tracker, parent run id, results, front, best, links), with every front
    model logged and registered as ``tiny-net``."""
    spec = parse_spec(tiny_job(tmp, tracking={"register_as": "tiny-net", "log_models": "front"}))
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    parent = tracker.start_job(spec.name, {}, {})
    results = []
    for r in rows():
        run = tracker.start_trial(r.trial_id, {}, "random")
        r = TrialResult(**{**r.__dict__, "mlflow_run_id": run})
        tracker.end_trial(run, r)
        results.append(r)
    front = pareto_front(results)
    for i, r in enumerate(front):
        torch.manual_seed(i)
        d = tmp / "trials" / str(r.trial_id)
        d.mkdir(parents=True)
        export_onnx(_Tiny().eval(), INPUT, d / "model.onnx")
        (d / "policy.json").write_text(json.dumps(r.policy.to_dict()))
    best = max(front, key=lambda r: r.accuracy)
    base = {"accuracy": 0.92, "latency_ms": 10.0, "size_bytes": 1000}
    links = publish_front(tracker, parent, results, front, best, tmp, spec, base, budget_ms=6.0)
    tracker.end(parent, "FINISHED")
    return tmp, spec, tracker, parent, results, front, best, links
