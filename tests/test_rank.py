"""Scores level within their noise are ranked toward the budget (slimtune.pipeline.rank)."""

import math

import pytest

from slimtune.pipeline.measure import measurement_order
from slimtune.pipeline.rank import ranked, score_noise
from slimtune.policy import Policy
from slimtune.result import TrialResult


def _row(i: int, score: float, ms: float) -> TrialResult:
    return TrialResult(trial_id=i, policy=Policy(prune={"a": i / 10}), state="ok",
                       stage="scored", score=score, predicted_latency_ms=ms, latency_ms=ms)


def test_score_noise_is_one_binomial_standard_error() -> None:
    assert score_noise(0.84, 500) == pytest.approx(math.sqrt(0.84 * 0.16 / 500))
    assert score_noise(0.84, 500) == pytest.approx(0.0164, abs=1e-4)
    assert score_noise(0.84, None) == 0.0 and score_noise(0.84, 0) == 0.0
    assert score_noise(1.0, 500) == 0.0


def test_level_scores_go_largest_latency_first_the_rest_by_score() -> None:
    rows = [_row(0, 0.848, 7.0), _row(1, 0.840, 9.5), _row(2, 0.845, 8.0),
            _row(3, 0.80, 9.9), _row(4, 0.81, 3.0), _row(5, 0.81, 4.0)]
    # on 500 examples 0.840-0.848 are one standard error apart at most: level
    assert [r.trial_id for r in ranked(rows, 500, lambda r: r.latency_ms)] == [1, 2, 0, 5, 4, 3]
    # counted on 100,000 examples they are told apart: best score first, exact ties larger first
    assert [r.trial_id for r in ranked(rows, 100_000, lambda r: r.latency_ms)] == [0, 2, 1, 5, 4, 3]
    # unknown noise: scores at face value
    assert [r.trial_id for r in ranked(rows, None, lambda r: r.latency_ms)] == [0, 2, 1, 5, 4, 3]


def test_measurement_order_times_the_level_candidate_nearest_the_budget_first() -> None:
    rows = [_row(0, 0.848, 7.0), _row(1, 0.842, 9.0), _row(2, 0.70, 9.9)]
    assert [r.trial_id for r in measurement_order(rows)] == [0, 1, 2]
    assert [r.trial_id for r in measurement_order(rows, examples=500)] == [1, 0, 2]


def test_rows_without_a_score_are_left_out() -> None:
    rows = [_row(0, 0.8, 1.0), TrialResult(trial_id=1, policy=Policy(prune={}), state="ok",
                                           stage="scored")]
    assert [r.trial_id for r in ranked(rows, 500, lambda r: r.latency_ms or 0.0)] == [0]
