"""Shared bits of the latency benchmarks: the quickstart model, machine conditions, output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"


def conditions() -> dict[str, Any]:
    """What the machine was doing: the figures mean little without it."""
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "loadavg_1_5_15": [round(x, 2) for x in load],
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "note": "shared 2-core VM; other engineers ran tests and jobs meanwhile"}


def write_result(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"latency_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**data, "conditions_end": conditions()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def quickstart():
    """The quickstart spec, its data, an untrained seeded ResNet-20 and its layer table."""
    import torch

    from slimtune.spec import load_spec
    from slimtune.validate import check_inputs

    spec = load_spec("quickstart")
    torch.manual_seed(0)
    return spec, check_inputs(spec)
