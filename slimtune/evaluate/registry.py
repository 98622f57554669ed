"""The registry of behaviour metrics: groups, the row keys they write, and how keys are bounded.

Pure data and small functions, no torch import: the spec validates ``evaluate``,
``constraints`` and ``objectives`` against it, and the gym env and the searchers ask it
whether a trial's metrics respect the bounds.

A *group* is the unit a spec turns on (``evaluate: [per_class, calibration]``); it is
computed by one function ``fn(inputs) -> dict`` named by ``function`` (imported on first
use). A *bound* says how a scalar row key may be constrained: ``max`` keys (``ece``,
``worst_class_drop_pp``) must stay at or below the bound, ``min`` keys (``agreement``,
``fgsm_accuracy``) at or above it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["max", "min"]  # of a bound: an upper bound ("max") or a lower one ("min")


@dataclass(frozen=True)
class MetricGroup:
    """A family of metrics computed together (one module of ``slimtune.evaluate``)."""

    name: str
    keys: tuple[str, ...]  # the row keys it writes
    default: bool  # on when the spec does not name ``evaluate``
    needs_torch_model: bool  # gradients: run on the fine-tuned torch model
    needs_baseline: bool  # compares with the baseline (reference computed once per job)
    function: str  # "module:function", ``fn(EvalInputs) -> dict``
    doc: str

    def load(self) -> Callable[..., dict[str, Any]]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Bound:
    """How a scalar key may be bounded: direction and the range a bound must lie in."""

    direction: Direction  # "max": feasible when value <= bound; "min": when value >= bound
    low: float
    high: float

    def describe(self, key: str) -> str:
        op = "<=" if self.direction == "max" else ">="
        return f"{key} must stay {op} its bound, a number in [{self.low:g}, {self.high:g}]"


_E = "slimtune.evaluate."
GROUPS: dict[str, MetricGroup] = {g.name: g for g in (
    MetricGroup("per_class", ("per_class_accuracy", "worst_class", "worst_class_accuracy",
                              "worst_class_drop_pp"),
                True, False, True, _E + "per_class:per_class_metrics",
                "per-class test accuracy and the largest per-class drop against the baseline"),
    MetricGroup("agreement", ("agreement", "exemplar_accuracy", "exemplar_baseline_accuracy",
                              "exemplar_count"),
                True, False, True, _E + "per_class:agreement_metrics",
                "top-1 agreement with the baseline, accuracy on the examples where the two "
                "disagree most (compression-identified exemplars)"),
    MetricGroup("calibration", ("ece", "nll", "reliability_bins"),
                True, False, False, _E + "calibration:calibration_metrics",
                "expected calibration error (15 bins) and negative log-likelihood"),
    MetricGroup("privacy", ("mia_advantage", "generalization_gap"),
                True, False, False, _E + "privacy:privacy_metrics",
                "loss-threshold membership inference advantage, train-test accuracy gap"),
    MetricGroup("robustness", ("robust_clean_accuracy", "fgsm_accuracy", "pgd_accuracy",
                               "noise_accuracy"),
                False, True, False, _E + "robustness:robustness_metrics",
                "accuracy under FGSM, PGD and Gaussian noise on a test subset"),
    MetricGroup("saliency", ("saliency_rank_corr",),
                False, True, True, _E + "saliency:saliency_metrics",
                "rank correlation of input-gradient saliency maps with the baseline's"),
)}

DEFAULT_GROUPS: tuple[str, ...] = tuple(g.name for g in GROUPS.values() if g.default)
# every key a group writes, plus the groups' total time: what a trials.jsonl row may carry
METRIC_KEYS: tuple[str, ...] = (*(k for g in GROUPS.values() for k in g.keys),
                                "evaluate_seconds")

_UNIT = (0.0, 1.0)
BOUNDS: dict[str, Bound] = {
    "accuracy": Bound("min", *_UNIT),  # validation accuracy of the deployed model
    "worst_class_accuracy": Bound("min", *_UNIT),
    "worst_class_drop_pp": Bound("max", 0.0, 100.0),
    "agreement": Bound("min", *_UNIT),
    "exemplar_accuracy": Bound("min", *_UNIT),
    "ece": Bound("max", *_UNIT),
    "nll": Bound("max", 0.0, math.inf),
    "robust_clean_accuracy": Bound("min", *_UNIT),
    "fgsm_accuracy": Bound("min", *_UNIT),
    "pgd_accuracy": Bound("min", *_UNIT),
    "noise_accuracy": Bound("min", *_UNIT),
    "mia_advantage": Bound("max", *_UNIT),
    "generalization_gap": Bound("max", *_UNIT),
    "saliency_rank_corr": Bound("min", -1.0, 1.0),
}

# What ``objectives:`` may name, and which way is better: the trial's own figures plus
# every boundable metric (a max-bounded key is minimised, a min-bounded one maximised).
OBJECTIVES: dict[str, Literal["maximize", "minimize"]] = {
    "latency_ms": "minimize", "size_bytes": "minimize", "macs": "minimize", "params": "minimize",
    **{k: "minimize" if b.direction == "max" else "maximize" for k, b in BOUNDS.items()},
}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy", "latency_ms", "size_bytes")


def group_of(key: str) -> str | None:
    """The group that writes ``key`` (None for ``accuracy`` and the trial's own figures)."""
    return next((g.name for g in GROUPS.values() if key in g.keys), None)


def bound_direction(key: str) -> Direction:
    """``max`` if ``key`` must stay at or below its bound, ``min`` if at or above."""
    return BOUNDS[key].direction


def check_bound(key: str, value: float) -> str | None:
    """Why ``value`` is not a valid bound for ``key`` (one line), or None if it is."""
    if key not in BOUNDS:
        return (f"unknown constraint {key!r}; valid: {', '.join(BOUNDS)}")
    b = BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return f"{key}: the bound must be a number, got {value!r}"
    if not b.low <= value <= b.high:
        return f"{key}: bound {value:g} is out of range ({b.describe(key)})"
    return None


def constraint_excess(metrics: Mapping[str, Any], constraints: Mapping[str, float]
                      ) -> dict[str, float]:
    """Per bound, how far the value is on the wrong side (> 0 violated, <= 0 satisfied).

    This is Optuna's constraint convention. A metric the trial did not produce (e.g. a
    trial stopped at the latency gate) counts as violated by +inf.
    """
    excess = {}
    for key, bound in constraints.items():
        value = metrics.get(key)
        if value is None:
            excess[key] = math.inf
        elif bound_direction(key) == "max":
            excess[key] = float(value) - bound
        else:
            excess[key] = bound - float(value)
    return excess


def violations(metrics: Mapping[str, Any], constraints: Mapping[str, float]) -> list[str]:
    """The names of the bounds in ``constraints`` that ``metrics`` violates (spec order).

    ``metrics`` is a trial's row (``TrialResult.to_dict()``) or any mapping of key to
    value; ``constraints`` is the spec's ``constraints:``. Missing metrics violate.
    """
    return [k for k, e in constraint_excess(metrics, constraints).items() if e > 0]


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Behaviour metrics as MLflow metrics: numbers as they are, lists of numbers as
    ``key.i`` (``per_class_accuracy.3``); anything else (reliability bins) left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
        elif isinstance(value, (list, tuple)):
            flat.update({f"{key}.{i}": float(v) for i, v in enumerate(value)
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return flat
