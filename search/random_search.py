"""Random search: every per-layer choice drawn uniformly (Optuna's RandomSampler)."""

from __future__ import annotations

import optuna

from slimtune.search.optuna_searcher import OptunaSearcher


class RandomSearcher(OptunaSearcher):
    """The best-of-N random policies a real search has to beat."""

    name = "random"

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed)
