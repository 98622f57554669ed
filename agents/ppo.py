"""Training a CompressionAgent with PPO (stable-baselines3) on the AMC env."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from slimtune.agents.agent import AgentCard, AgentError, CompressionAgent
from slimtune.agents.episodes import EpisodeRecorder
from slimtune.envs.compression import CompressionEnv
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.spec import AgentSpec


@dataclass(frozen=True)
class TrainedAgent:
    """An agent and the episodes it was trained on (one TrialResult each)."""

    agent: CompressionAgent
    episodes: list[tuple[TrialResult, float]]  # (result, reward)
    timesteps: int
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.timesteps, 1)


def make_ppo(env: CompressionEnv, spec: AgentSpec, *, seed: int) -> PPO:
    """PPO over the env; from ``spec.init``'s weights when given.

    ``gamma=1``: an episode is a fixed number of layers with its reward at the end
    (AMC), so no step should count less than another.
    """
    ppo = PPO("MlpPolicy", DummyVecEnv([lambda: env]), learning_rate=spec.learning_rate,
              n_steps=spec.n_steps, batch_size=spec.batch_size, gamma=1.0,
              ent_coef=spec.ent_coef, policy_kwargs={"net_arch": list(spec.net_arch)},
              seed=seed, device="cpu", verbose=0)
    if spec.init is not None:
        start = CompressionAgent.load(spec.init)
        if tuple(start.card.net_arch) != tuple(spec.net_arch):
            raise AgentError(f"{spec.init}: network {list(start.card.net_arch)} differs from "
                             f"agent.net_arch {list(spec.net_arch)} in the spec")
        ppo.policy.load_state_dict(start.network.state_dict())
    return ppo


def train_agent(env: CompressionEnv, spec: AgentSpec, *, seed: int = 0,
                timesteps: int | None = None,
                on_episode: Callable[[TrialResult, float], None] | None = None) -> TrainedAgent:
    """Train PPO for ``timesteps`` env steps (default ``spec.timesteps``)."""
    timesteps = timesteps or spec.timesteps
    ppo = make_ppo(env, spec, seed=seed)
    recorder = EpisodeRecorder(on_episode)
    start = time.perf_counter()
    ppo.learn(total_timesteps=timesteps, callback=recorder)
    seconds = time.perf_counter() - start
    p = env.problem
    feasible = [(r, w) for r, w in recorder.episodes if r.feasible]
    card = AgentCard(net_arch=tuple(spec.net_arch), trained_on={
        "model": p.spec.model.describe(), "model_signature": p.table.signature(),
        "dataset": p.spec.data.describe(), "layers": len(p.table.layers),
        "baseline_ms": p.baseline_ms, "budget_ms": p.budget_ms,
        "runtime": p.spec.target.runtime, "batch_size": p.spec.target.batch_size,
        "timesteps": int(ppo.num_timesteps), "episodes": len(recorder.episodes),
        "feasible_episodes": len(feasible),
        "init": str(spec.init.name) if spec.init is not None else None})
    agent = CompressionAgent(ppo.policy, card)
    return TrainedAgent(agent, recorder.episodes, int(ppo.num_timesteps), seconds)


def propose_policy(agent: CompressionAgent, env: CompressionEnv, *,
                   deterministic: bool = True) -> Policy:
    """The policy ``agent`` builds on ``env``'s model (no scoring, no measurement)."""
    return env.propose(lambda obs: agent.act(obs, deterministic=deterministic))


@dataclass(frozen=True)
class Attempt:
    """One proposal of ``propose_measured``: the wall's correction and what it gave."""

    correction: float
    predicted_ms: float
    measured_ms: float
    feasible: bool


def propose_measured(agent: CompressionAgent, env: CompressionEnv, *, tries: int = 3,
                     margin: float = 0.97) -> tuple[Policy, list[Attempt]]:
    """The agent's deterministic policy, measured; while it misses ``margin`` x the budget,
    the wall's correction is raised to the measured/predicted ratio and the agent proposes
    again (on a new model the predictor's error is not known before one measurement).

    The margin leaves room for the difference between this short measurement and the
    trial's full-protocol one that decides feasibility."""
    correction = env.scorer.correction()
    attempts: list[Attempt] = []
    for _ in range(tries):
        policy = env.propose(lambda obs: agent.act(obs), correction=correction)
        predicted = env.problem.predictor.predict_ms(policy)
        measured = env.scorer.latency(policy).median_ms
        env.scorer.record(predicted, measured)
        feasible = measured <= margin * env.problem.budget_ms
        attempts.append(Attempt(correction, predicted, measured, feasible))
        if feasible:
            break
        correction = max(correction, measured / max(predicted, 1e-9)) / margin
    return policy, attempts
