"""Searchers (ask/tell over a SearchSpace) and the Ray Tune orchestration of trials."""

from __future__ import annotations

from slimtune.search.base import Searcher
from slimtune.search.nsga2 import NSGA2Searcher
from slimtune.search.random_search import RandomSearcher
from slimtune.search.tpe import TPESearcher
from slimtune.search.uniform import UniformSearcher
from slimtune.spaces import SearchSpace

SEARCHERS: dict[str, type[Searcher]] = {
    cls.name: cls for cls in (TPESearcher, NSGA2Searcher, RandomSearcher, UniformSearcher)
}


def make_searcher(name: str, space: SearchSpace, *, seed: int, trials: int) -> Searcher:
    """The searcher registered under ``name``."""
    return SEARCHERS[name](space, seed=seed, trials=trials)


__all__ = ["SEARCHERS", "Searcher", "make_searcher"]
