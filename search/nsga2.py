"""NSGA-II: Optuna's multi-objective genetic search, accuracy up and latency down."""

from __future__ import annotations

import optuna

from slimtune.result import TrialResult
from slimtune.search.optuna_searcher import OptunaSearcher, latency_of, signal


class NSGA2Searcher(OptunaSearcher):
    """Two objectives (accuracy, latency) with the budget as a constraint.

    The population is a quarter of the trials (between 4 and 50) so that a short search
    still sees several generations.
    """

    name = "nsga2"
    directions = ("maximize", "minimize")

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        population = min(50, max(4, self.trials // 4))
        return optuna.samplers.NSGAIISampler(
            seed=self.seed, population_size=population)

    def values(self, result: TrialResult) -> list[float]:
        return [signal(result), latency_of(result)]
