"""EagleEye's adaptive-BN evaluator: the plainly pruned baseline, BN recalibrated, scored.

Channels are removed for real from the trained baseline as the policy says (magnitude
order, :func:`slimtune.compress.prune_structure`), sub-8-bit weights are rounded as the
deployed model will have them, BN statistics are re-estimated on a few training batches,
and the score is top-1 accuracy on a fixed validation subset. No weight is trained, so a
score takes well under a second for a small CNN and needs no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from slimtune.compress import quantize_weights
from slimtune.data import Split
from slimtune.evaluators.base import Evaluator
from slimtune.evaluators.bn import recalibrate_bn
from slimtune.layers import LayerTable
from slimtune.methods.apply import compressed_structure
from slimtune.objective import CLASSIFICATION, Objective, evaluate_split
from slimtune.policy import Policy
from slimtune.train import predict


@dataclass(frozen=True)
class ScoreSettings:
    """How a candidate is scored: BN recalibration batches and the validation subset."""

    recal_batches: int = 8
    batch_size: int = 128
    val_size: int = 1000


@dataclass
class BNRecalEvaluator(Evaluator):
    """Scores a policy by the accuracy of the pruned baseline after BN recalibration."""

    baseline: nn.Module
    table: LayerTable
    train: Split
    val: Split
    round_to: int = 1
    settings: ScoreSettings = ScoreSettings()
    threads: int = 2
    name: str = "bn_recal"
    objective: Objective = CLASSIFICATION
    _memo: dict[str, float] = field(default_factory=dict, repr=False)

    def model(self, policy: Policy) -> nn.Module:
        torch.set_num_threads(self.threads)
        model = compressed_structure(self.baseline, self.table, policy, round_to=self.round_to)
        quantize_weights(model, self.table, policy)  # below 8 bits: the deployed weights
        recalibrate_bn(model, self.train, batches=self.settings.recal_batches,
                       batch_size=self.settings.batch_size)
        return model.eval()

    @property
    def scored_examples(self) -> int | None:
        return min(self.settings.val_size, len(self.val)) if self.objective.top1 else None

    def score(self, policy: Policy) -> float:
        key = policy.key()
        if key not in self._memo:
            model = self.model(policy)
            n = min(self.settings.val_size, len(self.val))
            val = self.val.first(n)
            run = lambda x: predict(model, x)  # noqa: E731 - one forward per batch
            self._memo[key] = evaluate_split(self.objective, run, val)[0]
        return self._memo[key]
