"""PPO as a searcher: an AMC agent trained on the proxy env proposes the trials.

Before the first trial (``prepare``), PPO is trained on the job's own model for
``agent.timesteps`` env steps (optionally from ``agent.init``): every episode is a policy
scored cheaply (proxy accuracy, latency measured with a short protocol). The trials
then evaluate for real, in order: policies enqueued by a warm start, the trained agent's
deterministic policy, then the distinct episode policies best first (those that met
the budget before those that did not), then fresh samples from the agent's stochastic
policy. The agent does not learn from the trials' results (AMC's recipe: search on the
proxy, fine-tune the winners); it is kept in ``agent`` for ``slimtune run`` to save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace

MAX_SAMPLE_TRIES = 64


class PPOSearcher(Searcher):
    name = "ppo"

    def __init__(self, space: SearchSpace, *, seed: int = 0, trials: int = 16,
                 problem_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(space, seed=seed, trials=trials)
        self.problem_factory = problem_factory
        self.agent: Any = None  # a CompressionAgent once trained
        self.trained: Any = None
        self._env: Any = None
        self._queue: list[Policy] = []
        self._first: list[Policy] = []
        self._asked: set[str] = set()

    def enqueue(self, policy: Policy) -> None:
        self._first.append(policy)

    def prepare(self) -> None:
        """Train the agent on the proxy env (once)."""
        if self.agent is not None:
            return
        if self.problem_factory is None:
            raise RuntimeError("PPOSearcher needs a problem_factory to build its env")
        from slimtune.agents import propose_policy, train_agent
        from slimtune.envs.compression import CompressionEnv

        problem = self.problem_factory()
        self._env = CompressionEnv(problem=problem)
        self.trained = train_agent(self._env, problem.spec.agent, seed=self.seed)
        self.agent = self.trained.agent
        ranked = sorted(self.trained.episodes, key=lambda e: (e[0].feasible, e[1]), reverse=True)
        self._queue = [*self._first, propose_policy(self.agent, self._env),
                       *(result.policy for result, _ in ranked)]

    def ask(self) -> Policy:
        self.prepare()
        while self._queue:
            policy = self._queue.pop(0)
            if policy.key() not in self._asked:
                return self._mark(policy)
        from slimtune.agents import propose_policy

        for _ in range(MAX_SAMPLE_TRIES):
            policy = propose_policy(self.agent, self._env, deterministic=False)
            if policy.key() not in self._asked:
                return self._mark(policy)
        return self._mark(policy)  # the agent has converged: repeat its policy

    def _mark(self, policy: Policy) -> Policy:
        self._asked.add(policy.key())
        return policy

    def tell(self, policy: Policy, result: TrialResult) -> None:
        """Trial results are recorded by the job; the agent was trained on the proxy."""
