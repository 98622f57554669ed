"""Continuing a searcher after a stopped job (``slimtune run --resume``).

An Optuna searcher keeps its study in RDB storage and continues it
(``OptunaSearcher.resume``). Any other searcher (uniform, ppo, ...) starts again from
its beginning and is replayed: the policies it proposes that the stopped job already
finished are told their recorded results and skipped, so a deterministic searcher such
as ``uniform`` evaluates exactly the policies a job that never stopped would have.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.search.optuna_searcher import OptunaSearcher

MAX_REPLAY = 100_000  # asks spent skipping finished policies before giving up on skipping


def policy_key(policy: Policy) -> str:
    return json.dumps(policy.to_dict(), sort_keys=True)


def resume_searcher(searcher: Searcher, finished: Sequence[TrialResult]) -> Searcher:
    """``searcher`` ready to propose the trials a stopped job had not finished."""
    if isinstance(searcher, OptunaSearcher):
        searcher.resume(finished)
        return searcher
    return SkipFinished(searcher, finished)


class SkipFinished(Searcher):
    """Replays ``inner`` from its start, skipping (and telling) policies already finished."""

    def __init__(self, inner: Searcher, finished: Sequence[TrialResult]) -> None:
        super().__init__(inner.space, seed=inner.seed, trials=inner.trials)
        self.inner = inner
        self.name = inner.name
        self._done: dict[str, list[TrialResult]] = {}
        for result in finished:
            self._done.setdefault(policy_key(result.policy), []).append(result)

    def ask(self) -> Policy:
        for _ in range(MAX_REPLAY):
            policy = self.inner.ask()
            results = self._done.get(policy_key(policy))
            if not results:
                return policy
            self.inner.tell(policy, results.pop(0))
        return self.inner.ask()

    def tell(self, policy: Policy, result: TrialResult) -> None:
        self.inner.tell(policy, result)

    def prepare(self) -> None:
        self.inner.prepare()

    def enqueue(self, policy: Policy) -> None:
        self.inner.enqueue(policy)
