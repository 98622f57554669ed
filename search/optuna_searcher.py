"""Searchers backed by an Optuna sampler, through Optuna's ask-and-tell interface."""

from __future__ import annotations

from abc import abstractmethod

import optuna
from optuna.trial import TrialState

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace

LATENCY_CONSTRAINT = "latency_over_budget_ms"  # feasible when <= 0


class OptunaSearcher(Searcher):
    """Base for Optuna searchers; subclasses pick the sampler and the objectives.

    The latency budget reaches the sampler as a trial constraint (``latency - budget``,
    feasible when <= 0), so an infeasible policy is known as infeasible, not merely as a
    poor score.
    """

    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, space: SearchSpace, *, seed: int = 0, trials: int = 16) -> None:
        super().__init__(space, seed=seed, trials=trials)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(directions=list(self.directions),
                                         sampler=self.make_sampler())
        self._pending: list[tuple[Policy, optuna.Trial]] = []

    @abstractmethod
    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler this searcher asks."""

    def values(self, result: TrialResult) -> list[float]:
        """The objective values told to Optuna (accuracy 0 when not evaluated)."""
        return [result.accuracy or 0.0]

    def enqueue(self, policy: Policy) -> None:
        """Evaluate ``policy`` first (a warm start from a known policy)."""
        self.study.enqueue_trial(self.space.params_from_policy(policy))

    def ask(self) -> Policy:
        trial = self.study.ask(self.space.distributions())
        policy = self.space.policy_from_params(trial.params)
        self._pending.append((policy, trial))
        return policy

    def tell(self, policy: Policy, result: TrialResult) -> None:
        index = next(i for i, (p, _) in enumerate(self._pending) if p is policy)
        _, trial = self._pending.pop(index)
        if result.state == "failed" or result.latency_ms is None:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_constraint(LATENCY_CONSTRAINT,
                             result.latency_ms - (result.budget_ms or float("inf")))
        self.study.tell(trial, self.values(result))
