"""Pareto front of feasible trials (accuracy up, latency down, size down) and its hypervolume.

The objectives default to accuracy, latency and size; the spec's ``objectives:`` may
name others, among them any behaviour metric (``fgsm_accuracy`` up, ``ece`` down: the
direction comes from ``slimtune.evaluate.OBJECTIVES``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimtune.evaluate.registry import DEFAULT_OBJECTIVES, OBJECTIVES
from slimtune.policy import FLOAT_BITS, Policy
from slimtune.result import REFERENCE_LABELS, TrialResult

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


def front_2d(results: Sequence[TrialResult]) -> list[TrialResult]:
    """The feasible trials non-dominated in accuracy (up) and latency (down) alone, by latency:
    the staircase a 2-D plot of those two axes can draw."""
    return pareto_front(results, ("accuracy", "latency_ms"))


@dataclass(frozen=True)
class ChartPoint:
    """One marker of the front chart (PNG and HTML draw the same list).

    ``kind``: ``front`` (non-dominated in accuracy and latency: on the staircase),
    ``front_other`` (on the front only through size or another objective), ``feasible``
    (dominated), ``over_budget`` (infeasible: over the latency budget or a constraint),
    ``failed``, ``baseline`` or ``reference`` (a labelled reference policy).
    ``accuracy`` is None for a trial stopped before its accuracy was measured: it is
    drawn at its measured latency in a strip along the bottom.
    """

    kind: str
    label: str
    latency_ms: float
    accuracy: float | None
    size_bytes: int | None = None
    trial_id: int | None = None
    rank: int | None = None
    policy: str = ""
    run_id: str = ""
    best: bool = False


@dataclass(frozen=True)
class Reference:
    """A labelled point to mark beside the trials: the baseline or a reference policy
    (int8 only, uniform pruning), from a trial of this job or measured elsewhere."""

    label: str
    accuracy: float
    latency_ms: float
    size_bytes: int | None = None
    trial_id: int | None = None


def policy_summary(policy: Policy) -> str:
    """A one-line description of a policy: pruning, bit-widths and the other methods."""
    parts = []
    ratios = [r for r in policy.prune.values() if r > 0]
    if ratios:
        parts.append(f"pruned {len(ratios)}/{len(policy.prune)} groups, "
                     f"mean {100 * sum(ratios) / len(ratios):.0f}% max {100 * max(ratios):.0f}%")
    else:
        parts.append("no pruning")
    low = Counter(b for b in policy.bits.values() if b < FLOAT_BITS)
    if low:
        kept = len(policy.bits) - sum(low.values())
        parts.append(", ".join(f"int{b} x{n}" for b, n in sorted(low.items(), reverse=True))
                     + (f", fp32 x{kept}" if kept else ""))
    else:
        parts.append("fp32")
    for name, values in (("sparse", policy.sparsity), ("clustered", policy.clusters),
                         ("low-rank", policy.rank)):
        if values:
            parts.append(f"{name} x{len(values)}")
    if policy.skip:
        parts.append(f"{len(policy.skip)} blocks dropped ({', '.join(policy.skip)})")
    if policy.recipe:
        parts.append("recipe " + ",".join(f"{k}={v}" for k, v in policy.recipe.items()))
    return "; ".join(parts)


def reference_points(results: Sequence[TrialResult]) -> list[Reference]:
    """The trials that ran a reference policy a user would try by hand: every layer int8
    and nothing pruned ("int8 only"), or one prune ratio everywhere in fp32 ("uniform")."""
    refs: list[Reference] = []
    seen: set[str] = set()
    for r in results:
        p = r.policy
        if not r.feasible or r.accuracy is None or r.latency_ms is None:
            continue
        if p.sparsity or p.clusters or p.rank:
            continue
        bits = set(p.bits.values())
        ratios = {v for v in p.prune.values() if v > 0}
        if r.reference:  # a scoring search's own reference rows say what they are
            label = REFERENCE_LABELS.get(r.reference, r.reference)
        elif bits == {8} and not ratios:
            label = "int8 only"
        elif bits <= {FLOAT_BITS} and len(ratios) == 1:
            label = f"uniform {100 * ratios.pop():.0f}% pruned"
        else:
            continue
        if label not in seen:
            seen.add(label)
            refs.append(Reference(f"{label} (#{r.trial_id})", r.accuracy, r.latency_ms,
                                  r.size_bytes, r.trial_id))
    return refs


def chart_points(results: Sequence[TrialResult], front: Sequence[TrialResult], *,
                 baseline: Reference | None = None, references: Sequence[Reference] = (),
                 best: TrialResult | None = None) -> list[ChartPoint]:
    """Every trial with a measured latency, classified for the front chart; ranks are
    positions on ``front`` (1 = fastest). ``best`` defaults to the best feasible trial."""
    best = best or best_feasible(results)
    on_2d = {r.trial_id for r in front_2d(results)}
    rank = {r.trial_id: i for i, r in enumerate(front, 1)}
    points = []
    for r in results:
        if r.latency_ms is None or getattr(r, "stage", "") == "scored":
            continue  # a scored-only row has no measured latency to draw it at
        if r.trial_id in rank:
            kind = "front" if r.trial_id in on_2d else "front_other"
        elif r.feasible:
            kind = "front" if r.trial_id in on_2d else "feasible"
        else:
            kind = "failed" if r.state == "failed" else "over_budget"
        points.append(ChartPoint(kind, f"#{r.trial_id}", float(r.latency_ms), r.accuracy,
                                 r.size_bytes, r.trial_id, rank.get(r.trial_id),
                                 policy_summary(r.policy), r.mlflow_run_id,
                                 best is not None and r.trial_id == best.trial_id))
    for kind, refs in (("baseline", [baseline] if baseline else []), ("reference", references)):
        points += [ChartPoint(kind, ref.label, ref.latency_ms, ref.accuracy, ref.size_bytes,
                              ref.trial_id) for ref in refs]
    return points


_STYLE = {  # kind -> (legend, colour, marker, size)
    "feasible": ("feasible, dominated", "#7fa7cf", "o", 30),
    "front": ("front: accuracy vs latency", "#d62728", "o", 46),
    "front_other": ("front only through size", "#ff7f0e", "D", 40),
    "over_budget": ("over budget / infeasible", "#b0b0b0", "x", 30),
    "failed": ("failed", "#808080", "X", 30),
    "baseline": ("baseline", "#000000", "*", 200),
    "reference": ("reference policy", "#2ca02c", "s", 60),
}


def plot_pareto(
    results: Sequence[TrialResult],
    front: Sequence[TrialResult],
    path: Path,
    *,
    budget_ms: float,
    baseline_accuracy: float,
    baseline_latency_ms: float,
    title: str,
    references: Sequence[Reference] = (),
    baseline_size_bytes: int | None = None,
) -> Path:
    """Accuracy against measured latency: the staircase of the trials non-dominated in
    these two axes, the front's other points (through size) in another marker, dominated
    trials, every over-budget or failed trial greyed at its measured latency (along the
    bottom when it has no accuracy), the budget line, the baseline and the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = Reference("baseline", baseline_accuracy, baseline_latency_ms,
                         baseline_size_bytes)
    points = chart_points(results, front, baseline=baseline, references=references)
    trial_ids = {p.trial_id for p in points if p.kind not in ("baseline", "reference")}
    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=120)
    for kind, (label, color, marker, size) in _STYLE.items():
        sel = [p for p in points if p.kind == kind and p.accuracy is not None]
        if kind == "reference":  # a reference that is one of the trials: a ring around it
            ring = [p for p in sel if p.trial_id in trial_ids]
            sel = [p for p in sel if p.trial_id not in trial_ids]
            if ring:
                ax.scatter([p.latency_ms for p in ring], [p.accuracy for p in ring], s=170,
                           marker=marker, facecolors="none", edgecolors=color,
                           linewidths=1.8, label=f"{label} (one of the trials)", zorder=4)
        if sel:
            ax.scatter([p.latency_ms for p in sel], [p.accuracy for p in sel], s=size,
                       c=color, marker=marker, label=label, zorder=3 if kind != "feasible" else 2,
                       alpha=0.9 if kind not in ("feasible", "over_budget", "failed") else 0.6)
    for kind, marker, color in (("over_budget", "|", "#a0a0a0"), ("failed", "x", "#707070")):
        strip = [p for p in points if p.kind == kind and p.accuracy is None]
        if strip:  # stopped before an accuracy: at their measured latency, along the bottom
            ax.scatter([p.latency_ms for p in strip], [0.03] * len(strip),
                       transform=ax.get_xaxis_transform(), marker=marker, s=110, c=color,
                       label=f"{_STYLE[kind][0]}, no accuracy ({len(strip)}, along the bottom)",
                       zorder=2)
    stairs = sorted((p for p in points if p.kind == "front" and p.accuracy is not None),
                    key=lambda p: p.latency_ms)
    if stairs:
        xs = [p.latency_ms for p in stairs] + [max(budget_ms, stairs[-1].latency_ms)]
        ys = [p.accuracy for p in stairs] + [stairs[-1].accuracy]
        ax.step(xs, ys, where="post", color="#d62728", linewidth=1.4, zorder=2)
    named = {p.trial_id for p in points if p.kind == "reference"}
    best_ids = {p.trial_id for p in points if p.best}  # a trial id, or none
    for p in points:
        labelled = p.kind == "reference" or (p.kind in ("front", "front_other")
                                             and p.trial_id not in named)
        if labelled and p.accuracy is not None:
            best = p.best or p.trial_id in best_ids
            ax.annotate(p.label + (" best" if best else ""), (p.latency_ms, p.accuracy),
                        fontsize=7, xytext=(8, 5),
                        textcoords="offset points")
    ax.axvline(budget_ms, color="tab:orange", linestyle="--", label=f"budget {budget_ms:.3g} ms")
    ax.set_xlabel("measured median latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
