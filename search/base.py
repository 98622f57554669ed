"""The searcher interface: ask for a policy, tell it what the policy scored."""

from __future__ import annotations

from abc import ABC, abstractmethod

from slimtune.errors import UserInputError
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.spaces import SearchSpace


class Searcher(ABC):
    """Proposes policies from a SearchSpace and learns from their results.

    Like Optuna's samplers, a searcher is driven from outside: ``ask`` may be called
    several times before the matching ``tell`` calls (trials run concurrently), and
    ``tell`` receives the very Policy object ``ask`` returned.
    """

    name: str = "base"

    def __init__(self, space: SearchSpace, *, seed: int = 0, trials: int = 16) -> None:
        self.space = space
        self.seed = seed
        self.trials = trials

    def prepare(self) -> None:
        """Work to do once before the first ``ask`` (e.g. train an agent); no-op here."""
        return None

    def enqueue(self, policy: Policy) -> None:
        """Evaluate ``policy`` before anything else (a warm start), if the searcher can."""
        raise UserInputError(f"searcher {self.name!r} cannot be warm-started from a policy")

    @abstractmethod
    def ask(self) -> Policy:
        """The next policy to evaluate."""

    @abstractmethod
    def tell(self, policy: Policy, result: TrialResult) -> None:
        """Report the result of a policy that ``ask`` returned."""
