"""The baseline stage's typed figures keep pareto.json's ``baseline`` keys."""

from __future__ import annotations

from slimtune.job_baseline import BaselineFigures

KEYS = ["accuracy", "test_accuracy", "latency_ms", "latency_p10_ms", "latency_p90_ms",
        "size_bytes", "macs", "params", "source", "train_seconds", "cache_key", "budget_ms",
        "fastest_ms"]


def _figures(**kw) -> BaselineFigures:
    return BaselineFigures(accuracy=0.9, test_accuracy=0.89, latency_ms=2.0,
                           latency_p10_ms=1.9, latency_p90_ms=2.2, size_bytes=1000, macs=5,
                           params=7, source="cache", train_seconds=1.5, cache_key="k",
                           budget_ms=1.0, fastest_ms=0.5, **kw)


def test_the_figures_keep_the_keys_and_order_pareto_json_had():
    assert list(_figures().to_dict()) == KEYS  # no behaviour metrics: no metrics key
    with_metrics = _figures(metrics={"agreement": 1.0}).to_dict()
    assert list(with_metrics) == [*KEYS, "metrics"]


def test_a_resumed_job_reads_its_saved_figures_back():
    saved = {**_figures(metrics={"ece": 0.1}).to_dict(), "an_older_key": 3}
    assert BaselineFigures.from_dict(saved) == _figures(metrics={"ece": 0.1})
