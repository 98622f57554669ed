"""Searchers (ask/tell over a SearchSpace) and the Ray Tune orchestration of trials."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from slimtune.policy import Policy
from slimtune.search.base import Searcher
from slimtune.search.nsga2 import NSGA2Searcher
from slimtune.search.optuna_searcher import OptunaSearcher
from slimtune.search.ppo import PPOSearcher
from slimtune.search.random_search import RandomSearcher
from slimtune.search.tpe import TPESearcher
from slimtune.search.uniform import UniformSearcher
from slimtune.spaces import SearchSpace

SEARCHERS: dict[str, type[Searcher]] = {
    cls.name: cls for cls in (TPESearcher, NSGA2Searcher, RandomSearcher, UniformSearcher,
                              PPOSearcher)
}


def make_searcher(name: str, space: SearchSpace, *, seed: int, trials: int,
                  warm_start: str = "none", storage: str | None = None,
                  study_name: str | None = None,
                  constraints: Mapping[str, float] | None = None,
                  problem_factory: Callable[[], Any] | None = None) -> Searcher:
    """The searcher registered under ``name``, warm-started if asked and supported.

    ``storage``/``study_name``: the Optuna RDB study of an Optuna searcher (ignored by
    the others), which ``slimtune run --resume`` continues. ``problem_factory`` builds
    the AMC env's CompressionProblem for ``ppo``.
    """
    cls = SEARCHERS[name]
    if cls is PPOSearcher:
        searcher: Searcher = PPOSearcher(space, seed=seed, trials=trials,
                                         problem_factory=problem_factory)
    elif storage is not None and issubclass(cls, OptunaSearcher):
        searcher = cls(space, seed=seed, trials=trials, storage=storage, study_name=study_name)
    else:
        searcher = cls(space, seed=seed, trials=trials)
    if constraints and isinstance(searcher, OptunaSearcher):
        searcher.constraints = dict(constraints)  # the spec's metric bounds, told to Optuna
    if warm_start == "uniform" and isinstance(searcher, OptunaSearcher):
        for policy in uniform_anchors(space):
            searcher.enqueue(policy)
    return searcher


def uniform_anchors(space: SearchSpace) -> list[Policy]:
    """Uniform policies that are usually feasible and strong: int8 unpruned, fp32 half."""
    bits = {b for choices in space.bits.values() for b in choices}
    ratios = list(space.all_ratios())
    anchors = []
    if 8 in bits:
        anchors.append(space.uniform(0.0, 8))
    half = min(ratios, key=lambda r: abs(r - 0.5))
    anchors.append(space.uniform(half, max(bits)))
    return anchors


__all__ = ["SEARCHERS", "Searcher", "make_searcher"]
