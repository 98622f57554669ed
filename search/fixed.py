"""FixedSearcher: evaluates given policies in order (``slimtune apply``, replays)."""

from __future__ import annotations

from collections.abc import Sequence

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace


class FixedSearcher(Searcher):
    """Asks the given policies one after the other (cycling if asked for more)."""

    def __init__(self, space: SearchSpace, policies: Sequence[Policy], *,
                 name: str = "fixed") -> None:
        super().__init__(space, seed=0, trials=len(policies))
        if not policies:
            raise ValueError("FixedSearcher needs at least one policy")
        self.name = name
        self._policies = list(policies)
        self._next = 0

    def ask(self) -> Policy:
        policy = self._policies[self._next % len(self._policies)]
        self._next += 1
        return policy

    def tell(self, policy: Policy, result: TrialResult) -> None:
        """Nothing to learn."""
