"""Pareto front of feasible trials (accuracy up, latency down, size down) and its hypervolume.

The objectives default to accuracy, latency and size; the spec's ``objectives:`` may
name others, among them any behaviour metric (``fgsm_accuracy`` up, ``ece`` down: the
direction comes from ``slimtune.evaluate.OBJECTIVES``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slimtune.evaluate.registry import DEFAULT_OBJECTIVES, OBJECTIVES
from slimtune.result import TrialResult

_OWN = ("accuracy", "latency_ms", "size_bytes", "macs", "params")  # TrialResult fields


def _costs(r: TrialResult, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> tuple[float, ...]:
    """Every objective as a cost to minimise; a behaviour metric the trial lacks is +inf."""
    costs = []
    for key in objectives:
        value = getattr(r, key) if key in _OWN else r.metrics.get(key)
        if value is None and key not in _OWN:
            costs.append(math.inf)
            continue
        v = float(value or 0.0)
        costs.append(-v if OBJECTIVES[key] == "maximize" else v)
    return tuple(costs)


def dominates(a: TrialResult, b: TrialResult,
              objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> bool:
    """True if ``a`` is no worse than ``b`` in every objective and better in one."""
    ca, cb = _costs(a, objectives), _costs(b, objectives)
    return all(x <= y for x, y in zip(ca, cb, strict=True)) and ca != cb


def pareto_front(results: Sequence[TrialResult],
                 objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[TrialResult]:
    """The non-dominated feasible trials, ordered by latency. Ties keep the first trial.

    Only rows with a deployed, evaluated model count (``TrialResult.has_model``): a
    candidate that was only scored or measured is not something a user can be handed."""
    feasible = [r for r in results if r.feasible and r.has_model]
    front: list[TrialResult] = []
    for r in feasible:
        if any(dominates(o, r, objectives) for o in feasible):
            continue
        if any(_costs(f, objectives) == _costs(r, objectives) for f in front):
            continue
        front.append(r)
    return sorted(front, key=lambda r: (r.latency_ms, -(r.accuracy or 0.0)))


def best_feasible(results: Sequence[TrialResult]) -> TrialResult | None:
    """The feasible trial with the best validation accuracy (ties: the faster), among the
    rows with a deployed model."""
    feasible = [r for r in results if r.feasible and r.has_model]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (r.accuracy or 0.0, -(r.latency_ms or 0.0)))


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (costs, minimised) up to ``reference``.

    Slices along the first objective and sums 2-D areas; fine for the few hundred
    points a search produces.
    """
    pts = np.asarray(points, dtype=float)
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, 0])
    pts = pts[order]
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = upper - p[0]
        if width > 0:
            volume += width * hypervolume(pts[: i + 1, 1:], ref[1:])
    return float(volume)


def normalized_hypervolume(
    front: Sequence[TrialResult], *, budget_ms: float, baseline_size_bytes: int
) -> float:
    """Hypervolume in the unit cube of (error, latency / budget, size / baseline size).

    The reference point (1, 1, 1) is a useless model at the budget and the baseline's
    size, so a front of better models has a volume in (0, 1].
    """
    if not front:
        return 0.0
    pts = np.array([[1.0 - (r.accuracy or 0.0), (r.latency_ms or 0.0) / budget_ms,
                     (r.size_bytes or 0) / baseline_size_bytes] for r in front])
    return hypervolume(pts, np.ones(3))


def plot_pareto(
    results: Sequence[TrialResult],
    front: Sequence[TrialResult],
    path: Path,
    *,
    budget_ms: float,
    baseline_accuracy: float,
    baseline_latency_ms: float,
    title: str,
) -> Path:
    """Accuracy against measured latency, marker size by model size, front and budget drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    done = [r for r in results if r.latency_ms is not None and r.accuracy is not None]
    sizes = np.array([r.size_bytes or 1 for r in done], dtype=float)
    scale = 30 + 170 * sizes / max(sizes.max(), 1) if len(done) else []
    ok = [r.feasible for r in done]
    for feasible, label, color in ((True, "feasible trial", "tab:blue"),
                                   (False, "over budget", "tab:gray")):
        sel = [i for i, f in enumerate(ok) if f == feasible]
        if sel:
            ax.scatter([done[i].latency_ms for i in sel], [done[i].accuracy for i in sel],
                       s=[scale[i] for i in sel], c=color, alpha=0.55, label=label)
    if front:
        ax.plot([r.latency_ms for r in front], [r.accuracy for r in front], "-o",
                color="tab:red", label="Pareto front", markersize=4)
        for r in front:
            ax.annotate(f"#{r.trial_id}", (r.latency_ms, r.accuracy), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(budget_ms, color="tab:orange", linestyle="--", label=f"budget {budget_ms:.3g} ms")
    ax.scatter([baseline_latency_ms], [baseline_accuracy], marker="*", s=200, c="black",
               label="baseline")
    ax.set_xlabel("measured median latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
