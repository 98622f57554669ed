from __future__ import annotations

import numpy as np
import pytest

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.pareto import (
    best_feasible,
    dominates,
    hypervolume,
    normalized_hypervolume,
    pareto_front,
    plot_pareto,
)


def r(i, acc, lat, size, state="ok"):
    return TrialResult(trial_id=i, policy=Policy(), state=state, accuracy=acc,
                       test_accuracy=acc, latency_ms=lat, size_bytes=size)


def test_front_is_the_non_dominated_feasible_set():
    results = [
        r(0, 0.90, 1.0, 100),   # front: most accurate
        r(1, 0.85, 0.5, 100),   # front: fastest
        r(2, 0.84, 0.6, 100),   # dominated by 1
        r(3, 0.80, 0.9, 10),    # front: smallest
        r(4, 0.99, 0.1, 1, state="infeasible"),  # never on the front
        r(5, 0.90, 1.0, 100),   # duplicate of 0: kept once
        r(6, None, None, None, state="failed"),
    ]
    front = pareto_front(results)
    assert [f.trial_id for f in front] == [1, 3, 0]
    assert dominates(results[1], results[2]) and not dominates(results[2], results[1])
    assert best_feasible(results).trial_id == 0


def test_hypervolume_known_values():
    assert hypervolume(np.array([[0.5, 0.5]]), np.array([1.0, 1.0])) == pytest.approx(0.25)
    # two points in 2-D: union of two rectangles
    pts = np.array([[0.2, 0.6], [0.6, 0.2]])
    assert hypervolume(pts, np.ones(2)) == pytest.approx(0.8 * 0.4 + 0.4 * 0.8 - 0.4 * 0.4)
    # 3-D unit cube corner
    assert hypervolume(np.zeros((1, 3)), np.ones(3)) == pytest.approx(1.0)
    # points outside the reference box contribute nothing
    assert hypervolume(np.array([[2.0, 0.0]]), np.ones(2)) == 0.0


def test_normalized_hypervolume_in_unit_interval():
    front = [r(0, 0.9, 0.5, 50)]
    hv = normalized_hypervolume(front, budget_ms=1.0, baseline_size_bytes=100)
    assert hv == pytest.approx(0.9 * 0.5 * 0.5)
    assert normalized_hypervolume([], budget_ms=1.0, baseline_size_bytes=100) == 0.0


def test_plot_writes_png(tmp_path):
    results = [r(0, 0.9, 1.0, 100), r(1, 0.85, 0.5, 50), r(2, 0.8, 2.0, 50, "infeasible")]
    path = plot_pareto(results, pareto_front(results), tmp_path / "p.png", budget_ms=1.5,
                       baseline_accuracy=0.92, baseline_latency_ms=2.0, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
