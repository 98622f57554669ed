"""TPE: Optuna's Tree-structured Parzen Estimator, maximising accuracy under the budget."""

from __future__ import annotations

import optuna

from slimtune.search.optuna_searcher import OptunaSearcher


class TPESearcher(OptunaSearcher):
    """Single objective (validation accuracy), latency budget as a constraint.

    The first quarter of the trials (at least 4) are random start-up trials.
    """

    name = "tpe"

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=self.seed, n_startup_trials=max(4, self.trials // 4),
            multivariate=True)
