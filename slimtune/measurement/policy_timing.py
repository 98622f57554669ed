"""Whole policies timed on the target: deployed as a trial deploys them, measured
interleaved; the random and anchor policies a predictor is calibrated on, and their
cached measurements."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from slimtune.baseline import cache_dir
from slimtune.layers import LayerTable
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.layer_lut import LUT_VERSION, target_key
from slimtune.policy import Policy, write_text_atomic
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec

#: Whole-model measurements for calibration and error reports.
MODEL_PROTOCOL = MeasureProtocol(warmup=10, rounds=5, repeats=20, min_seconds_per_round=0.1)



def random_policies(space: SearchSpace, n: int, *, seed: int = 0) -> list[Policy]:
    """``n`` policies with every choice drawn uniformly (what random search proposes)."""
    rng = random.Random(seed)
    dists = space.distributions()
    return [space.policy_from_params({k: rng.choice(d.choices)  # type: ignore[attr-defined]
                                      for k, d in dists.items()}) for _ in range(n)]


def calibration_set(space: SearchSpace, n_random: int, *, seed: int = 0) -> list[Policy]:
    """Uniform anchors (every ratio allowed, fp32 and all-int8) plus random policies (per
    layer: the predictor's calibration does not depend on ``space.bits_per``)."""
    space = replace(space, model_bits=False)
    ratios = list(space.all_ratios())
    picks = [ratios[0], ratios[len(ratios) // 2], ratios[-1]]
    if len(ratios) > 3:
        picks.append(ratios[len(ratios) // 4])
    bits = sorted({b for bs in space.bits.values() for b in bs})
    anchors = [space.uniform(r, b) for r in sorted(set(picks)) for b in {bits[0], bits[-1]}]
    out: dict[str, Policy] = {p.key(): p for p in anchors}
    for p in random_policies(space, n_random, seed=seed + 1000):
        out.setdefault(p.key(), p)
    return list(out.values())


def _calibration_path(spec: JobSpec, table: LayerTable, protocol: MeasureProtocol) -> Path:
    h = hashlib.sha256(json.dumps([LUT_VERSION, table.signature(), spec.space.round_to,
                                   asdict(protocol)])
                       .encode()).hexdigest()[:12]
    return cache_dir() / "latency_lut" / f"{target_key(spec)}.calib-{h}.json"


def read_calibration(spec: JobSpec, table: LayerTable, policies: Sequence[Policy],
                      protocol: MeasureProtocol) -> dict[str, float]:
    try:
        data = json.loads(_calibration_path(spec, table, protocol).read_text())
    except (OSError, ValueError):
        return {}
    wanted = {p.key() for p in policies}
    return {k: float(v) for k, v in data.get("measured_ms", {}).items() if k in wanted}


def write_calibration(spec: JobSpec, table: LayerTable, points: Mapping[str, float],
                       protocol: MeasureProtocol) -> None:
    path = _calibration_path(spec, table, protocol)
    try:
        old = json.loads(path.read_text()).get("measured_ms", {})
    except (OSError, ValueError):
        old = {}
    write_text_atomic(path, json.dumps({"signature": table.signature(),
                                        "measured_ms": {**old, **points}}, sort_keys=True))


def measure_policies(spec: JobSpec, model: nn.Module, table: LayerTable,
                     policies: Sequence[Policy], *, calibration_x: np.ndarray | None = None,
                     protocol: MeasureProtocol = MODEL_PROTOCOL,
                     interleave: bool = True) -> list[Any]:
    """Prune, deploy (ONNX + int8 QDQ, or the torch module) and measure each policy on the
    target, as a trial's latency gate does; returns LatencyStats.

    ``interleave`` (default) measures the policies round-robin, so a burst of load on a
    shared machine is spread over all of them (not cached); otherwise each is measured
    alone through the latency cache, exactly as a trial does."""
    from slimtune.export import export_onnx, quantize_onnx
    from slimtune.measurement.latency import machine_lock
    from slimtune.measurement.targets import measure_many_on_target, measure_on_target
    from slimtune.methods.apply import compressed_structure
    from slimtune.methods.quantization import int8_layers

    t = spec.target
    shape = table.input_shape
    if calibration_x is None:
        n = spec.finetune.calibration_size
        calibration_x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    subjects: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="slimtune-policies-") as tmp:
        for i, policy in enumerate(policies):
            with machine_lock("shared"):
                pruned = compressed_structure(model, table, policy,
                                              round_to=spec.space.round_to)
                subject: Any = pruned
                if t.backend.takes_onnx:
                    fp32 = export_onnx(pruned, shape, Path(tmp) / f"p{i}.fp32.onnx")
                    subject = quantize_onnx(fp32, Path(tmp) / f"p{i}.onnx",
                                            int8_layers=int8_layers(policy, pruned),
                                            calibration=calibration_x)
            subjects.append(subject)
        if interleave:
            return measure_many_on_target(t.name, [(s, shape) for s in subjects],
                                          runtime=t.runtime, batch_size=t.batch_size,
                                          threads=t.threads, protocol=protocol, interleave=True)
        return [measure_on_target(t.name, s, runtime=t.runtime, input_shape=shape,
                                  batch_size=t.batch_size, threads=t.threads, protocol=protocol)
                for s in subjects]


