"""CompressionEnv: AMC as a gymnasium environment, one layer per step."""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from slimtune.envs.episode import Choice, PolicyBuilder
from slimtune.envs.features import OBS_FEATURES, OBS_HIGH, OBS_LOW
from slimtune.envs.problem import CompressionProblem, prepare_problem
from slimtune.envs.proxy import ProxyEvaluator
from slimtune.evaluate import violations
from slimtune.policy import Policy
from slimtune.spec import JobSpec, load_spec


class CompressionEnv(gym.Env):
    """Compress one model, one conv/linear layer per step, under a latency budget.

    ## Action space
    ``Box(-1, 1, (2,), float32)``: ``a[0]`` maps linearly to a prune ratio in
    ``[0, max(space.prune_ratios)]`` for the layer's channel group (snapped to the
    group's allowed ratios; ignored when an earlier layer of the group set it, or the
    layer is not prunable); ``a[1]`` picks the bit-width by rank (-1: most bits).

    ## Observation space
    ``Box(-1, 2, (19,), float32)``: the features of the layer about to be decided, in
    the order of ``slimtune.envs.features.OBS_FEATURES`` (depth, type, log channels,
    kernel, stride, feature-map size, MAC and parameter shares, MACs already cut, MACs
    still to come, whether this step sets a group's ratio, the previous decision, the
    budget and the predicted latency floor as fractions of the baseline's latency).

    ## Budget wall (AMC)
    Before a decision is applied it is clipped so that the predicted latency, with all
    later layers at their most aggressive setting, stays within the budget
    (``slimtune.envs.episode.PolicyBuilder``). The predictor can err, so the final
    policy is always measured on the target; ``info["feasible"]`` says whether the
    measurement met the budget. The wall scales predictions by the median
    measured/predicted ratio of recent episodes (``info["wall_correction"]``), so a
    predictor's systematic error is learnt from the measurements.

    ## Rewards
    0 on every step but the last. At the end: the proxy accuracy
    (``env.reward: acc``) or ``-error * log(MACs)`` (``error_log_flops``), minus
    ``env.infeasible_penalty`` if the latency misses the budget or the proxy
    model breaks one of the spec's ``constraints`` (``info["violations"]``). The score
    is the proxy's, or with ``env.evaluator`` the supernet's (or bn_recal's) score of
    the policy; then one new architecture in ``env.measure_every`` is measured and the
    others take the predicted latency scaled by the measured/predicted ratio learnt so
    far (``info["latency_source"]``).

    ## Episode end
    Terminates after the last layer; never truncated.

    ## Arguments
    ``gymnasium.make("slimtune/Compression-v0", job="job.yaml", budget={...})``:
    ``job`` is a spec path, a built-in job name or a JobSpec; other keyword arguments
    replace spec sections (merged key by key). ``problem=`` reuses a prepared
    CompressionProblem, ``scorer=`` shares a ProxyEvaluator's memo between copies.

    ## Example
    >>> env = gymnasium.make("slimtune/Compression-v0", job="quickstart")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata = {"render_modes": []}

    def __init__(self, job: str | os.PathLike[str] | JobSpec | None = None, *,
                 problem: CompressionProblem | None = None,
                 scorer: ProxyEvaluator | None = None, **sections: Any) -> None:
        if problem is None:
            if job is None:
                raise TypeError("CompressionEnv needs job= (a spec path or name) or problem=")
            spec = job if isinstance(job, JobSpec) else load_spec(job)
            problem = prepare_problem(spec.with_sections(**sections) if sections else spec)
        elif sections:
            raise TypeError("spec sections cannot be overridden on a prepared problem")
        self.problem = problem
        self.scorer = scorer or ProxyEvaluator(problem)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, (len(OBS_FEATURES),),
                                            dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self._builder = PolicyBuilder(problem)

    @property
    def builder(self) -> PolicyBuilder:
        """The episode in progress."""
        return self._builder

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._builder = PolicyBuilder(self.problem, correction=self.scorer.correction())
        return self._builder.observation(), {"layer": self._builder.layers[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._builder.done:
            raise RuntimeError("episode is over: call reset()")
        b = self._builder
        decision = b.decide(b.choice_from_action(action))
        info: dict[str, Any] = {"layer": decision.layer, "clipped": decision.clipped,
                                "ratio": decision.chosen.ratio, "bits": decision.chosen.bits,
                                "predicted_latency_ms": decision.predicted_ms}
        if not b.done:
            return b.observation(), 0.0, False, False, info
        reward, end = self.score(b.policy())
        if end["measured_latency_ms"] is not None:
            self.scorer.record(end["predicted_latency_ms"], end["measured_latency_ms"])
        end["wall_correction"] = b.correction
        end["clipped_steps"] = sum(d.clipped for d in b.decisions)
        info.update(end)
        return b.observation(), reward, True, False, info

    def score(self, policy: Policy, *, measure: bool = False) -> tuple[float, dict[str, Any]]:
        """The episode-end reward of ``policy`` and what it was made of. Its latency is
        measured on the target when ``measure`` or when the scorer samples it
        (``env.measure_every``); otherwise it is the prediction times the learnt
        measured/predicted ratio (``latency_source`` says which)."""
        p = self.problem
        predicted = p.predictor.predict_ms(policy)
        stats = self.scorer.latency(policy) if measure else self.scorer.sampled_latency(policy)
        if stats is not None:
            latency_ms, source = stats.median_ms, "measured"
        else:
            latency_ms, source = predicted * self.scorer.correction(), "predicted"
        acc, metrics = self.scorer.evaluate(policy)
        macs = p.channels.macs(policy)
        broken = violations({**metrics, "accuracy": acc}, p.spec.constraints)
        feasible = latency_ms <= p.budget_ms and not broken
        if p.spec.env.reward == "acc":
            reward = acc
        else:
            reward = -(1.0 - acc) * math.log(max(macs, 2))
        if not feasible:
            reward -= p.spec.env.infeasible_penalty
        return float(reward), {
            "policy": policy, "proxy_accuracy": acc, "macs": macs,
            "latency_ms": latency_ms, "latency_source": source,
            "measured_latency_ms": stats.median_ms if stats is not None else None,
            "predicted_latency_ms": predicted,
            "latency": stats.to_dict() if stats is not None else {},
            "budget_ms": p.budget_ms, "feasible": feasible, "violations": broken,
            "metrics": metrics}

    def propose(self, choose: Any, *, correction: float | None = None) -> Policy:
        """Run one episode's decisions with ``choose(obs) -> action``, without scoring
        (the wall uses ``correction``, by default the one learnt so far)."""
        if correction is None:
            correction = self.scorer.correction()
        self._builder = PolicyBuilder(self.problem, correction=correction)
        while not self._builder.done:
            action = choose(self._builder.observation())
            self._builder.decide(self._builder.choice_from_action(action))
        return self._builder.policy()

    def decide(self, choice: Choice) -> None:
        """Take a decision given as a Choice (for scripted policies and tests)."""
        self._builder.decide(choice)
