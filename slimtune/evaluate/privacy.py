"""Privacy: a loss-threshold membership-inference attack and the generalisation gap.

Members are the first ``PRIVACY_SIZE`` training examples (the baseline was trained on
them and the fine-tune samples from them); non-members are the first ``PRIVACY_SIZE``
test examples. Both sets have the same size (a balanced attack), so an advantage of 0
is a coin flip and 1 a perfect attack; attack accuracy is ``(1 + advantage) / 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PRIVACY_SIZE = 1000  # members and non-members each (fewer if a split is smaller)


def loss_threshold_advantage(member_losses: np.ndarray | torch.Tensor,
                             nonmember_losses: np.ndarray | torch.Tensor) -> float:
    """Yeom et al. 2018: guess "member" when the loss is at most a threshold; the
    advantage is the best true-positive minus false-positive rate over all thresholds
    (0 for no threshold, so never negative). Inputs of unequal length are cut to the
    shorter one so the attack stays balanced."""
    m = np.asarray(member_losses, dtype=float)
    o = np.asarray(nonmember_losses, dtype=float)
    n = min(len(m), len(o))
    m, o = np.sort(m[:n]), np.sort(o[:n])
    thresholds = np.concatenate([m, o])
    tpr = np.searchsorted(m, thresholds, side="right") / n
    fpr = np.searchsorted(o, thresholds, side="right") / n
    return float(max(0.0, (tpr - fpr).max()))


def privacy_metrics(inputs: Any) -> dict[str, Any]:
    """``privacy`` group: ``mia_advantage`` of the loss-threshold attack and
    ``generalization_gap`` (accuracy on the member set minus on the non-member set),
    from the deployed model's logits on ``PRIVACY_SIZE`` examples of each."""
    train, test = inputs.data.train, inputs.data.test
    n = min(PRIVACY_SIZE, len(train), len(test))
    members = train.head(n)
    member_logits = inputs.logits_fn(members.x)
    other_logits = inputs.logits[:n]
    m_loss = F.cross_entropy(member_logits, members.y, reduction="none")
    o_loss = F.cross_entropy(other_logits, test.y[:n], reduction="none")
    gap = (float((member_logits.argmax(1) == members.y).float().mean())
           - float((other_logits.argmax(1) == test.y[:n]).float().mean()))
    return {"mia_advantage": loss_threshold_advantage(m_loss, o_loss),
            "generalization_gap": gap}
