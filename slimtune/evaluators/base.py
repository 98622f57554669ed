"""The evaluator interface: a cheap, faithful score for a policy, without fine-tuning.

AMC, EagleEye and Once-for-All score thousands of candidates this way and fine-tune
only the winners. An evaluator is built once per (baseline, search space) and then
asked for many scores; ``model`` hands the final stage the network a winner starts
its real fine-tune from (the plainly pruned baseline, or the supernet's sub-network).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import nn

from slimtune.policy import Policy


class Evaluator(ABC):
    """Scores policies: higher is better, comparable between policies of one job.

    ``score`` is the validation-subset accuracy of the policy's compressed network
    after BN recalibration (no weight update). Same policy, same score: implementations
    memoise by ``Policy.key()``.
    """

    name: str = "base"

    @property
    def scored_examples(self) -> int | None:
        """How many examples a score's top-1 is counted on (its noise is binomial), or
        None when the score is not a top-1 proportion (a custom metric) or unknown."""
        return None

    @abstractmethod
    def score(self, policy: Policy) -> float:
        """The policy's score (validation-subset top-1 accuracy, in [0, 1])."""

    def score_many(self, policies: Sequence[Policy]) -> list[float]:
        """Scores of several policies (a batch scored in one Ray task)."""
        return [self.score(p) for p in policies]

    @abstractmethod
    def model(self, policy: Policy) -> nn.Module:
        """The policy's compressed network, channels really removed, in eval mode: the
        weights a final fine-tune starts from (BN statistics recalibrated)."""
