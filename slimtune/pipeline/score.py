"""Stage 1: candidates asked from the searcher, screened, scored, and told back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from slimtune.evaluators.base import Evaluator
from slimtune.measurement.screening import SLACK, Screen
from slimtune.policy import Policy
from slimtune.ray_local import adopt_env, driver_env
from slimtune.result import TrialResult
from slimtune.search.base import Searcher

OnRow = Callable[[TrialResult], None]


class ScoringPool:
    """Ray actors, each holding one copy of the evaluator, scoring batches of policies.

    The evaluator is put in Ray's object store once; a batch is split evenly over the
    actors, so a cluster scores in parallel. Scores are memoised here by policy key.
    """

    def __init__(self, evaluator: Evaluator, *, workers: int, cpus: float) -> None:
        import ray

        ref = ray.put(evaluator)
        worker = ray.remote(num_cpus=cpus)(_ScoreWorker)
        env = driver_env()
        self.actors = [worker.remote(ref, env) for _ in range(max(workers, 1))]
        self.memo: dict[str, float] = {}

    def score(self, policies: Sequence[Policy]) -> list[float]:
        import ray

        todo = list({p.key(): p for p in policies if p.key() not in self.memo}.values())
        if todo:
            n = len(self.actors)
            chunks = [todo[i::n] for i in range(n)]
            futures = [a.score_many.remote(c) for a, c in zip(self.actors, chunks, strict=True)
                       if c]
            for chunk, scores in zip([c for c in chunks if c], ray.get(futures), strict=True):
                self.memo.update((p.key(), s) for p, s in zip(chunk, scores, strict=True))
        return [self.memo[p.key()] for p in policies]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


class _ScoreWorker:
    """The Ray actor behind ScoringPool."""

    def __init__(self, evaluator: Evaluator, env: dict[str, str] | None = None) -> None:
        adopt_env(env)
        self.evaluator = evaluator

    def score_many(self, policies: list[Policy]) -> list[float]:
        return self.evaluator.score_many(policies)


class LocalPool:
    """ScoringPool's interface without Ray (tests, and a searcher's own env)."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def score(self, policies: Sequence[Policy]) -> list[float]:
        return self.evaluator.score_many(policies)

    def close(self) -> None:
        return None


def score_candidates(searcher: Searcher, pool: Any, screen: Screen, *, count: int,
                     first_id: int, batch: int, on_row: OnRow) -> list[TrialResult]:
    """Ask ``count`` candidates in batches; score the ones the screen admits (within
    ``screening.SLACK`` of the budget: measurement decides near the boundary); tell the
    searcher each score with its predicted latency (a screened-out candidate is told
    infeasible, unscored). Returns one ``scored`` row per candidate, in ask order."""
    rows: list[TrialResult] = []
    while len(rows) < count:
        asked = [searcher.ask() for _ in range(min(batch, count - len(rows)))]
        admitted = [p for p in asked if screen.admits(p, slack=SLACK)]
        scores = dict(zip([p.key() for p in admitted], pool.score(admitted), strict=True))
        for policy in asked:
            score = scores.get(policy.key())
            row = TrialResult(trial_id=first_id + len(rows), policy=policy,
                              state="ok" if score is not None else "infeasible",
                              stage="scored", score=score,
                              predicted_latency_ms=screen.predicted_ms(policy),
                              budget_ms=screen.budget_ms, searcher=searcher.name)
            on_row(row)
            searcher.tell(policy, row)
            rows.append(row)
    return rows
