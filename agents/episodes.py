"""EpisodeRecorder: an SB3 callback that keeps every finished episode (and logs it).

Each episode is one compressed policy scored by the env; it becomes a TrialResult
(proxy accuracy as ``accuracy``, measured latency as ``latency_ms``: None when the
episode's latency was predicted, see ``env.measure_every``) and, with a
Tracker, one MLflow child run, like a trial of ``slimtune run``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from slimtune.result import TrialResult


def episode_result(number: int, info: dict[str, Any], reward: float) -> TrialResult:
    """A finished episode's info as a TrialResult (``test_accuracy`` stays empty)."""
    return TrialResult(
        trial_id=number, policy=info["policy"],
        state="ok" if info["feasible"] else "infeasible",
        accuracy=info["proxy_accuracy"], latency_ms=info["measured_latency_ms"],
        predicted_latency_ms=info.get("predicted_latency_ms"),
        latency=info["latency"], macs=info["macs"], budget_ms=info["budget_ms"],
        searcher="ppo-episode", seconds=info.get("seconds", 0.0),
        metrics=info.get("metrics", {}), violations=tuple(info.get("violations", ())))


class EpisodeRecorder(BaseCallback):
    """Collects ``(TrialResult, reward)`` per finished episode; calls ``on_episode``."""

    def __init__(self, on_episode: Callable[[TrialResult, float], None] | None = None) -> None:
        super().__init__()
        self.episodes: list[tuple[TrialResult, float]] = []
        self.on_episode = on_episode

    def _on_step(self) -> bool:
        for done, info, reward in zip(self.locals["dones"], self.locals["infos"],
                                      self.locals["rewards"], strict=True):
            if done and "policy" in info:
                result = episode_result(len(self.episodes), info, float(reward))
                self.episodes.append((result, float(reward)))
                if self.on_episode is not None:
                    self.on_episode(result, float(reward))
        return True
