"""Per-class accuracy, agreement with the baseline, and compression-identified exemplars.

All on the deployed model's logits over the whole test split (no subset: these are a
few tensor operations on logits the trial computes anyway).

Compression-identified exemplars follow Hooker et al. 2019 ("What do compressed deep
neural networks forget?"): the examples on which the compressed model departs most from
the baseline. With one compressed model, "most" is the top ``EXEMPLAR_FRACTION`` of
test examples by total-variation distance between the two softmax outputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

EXEMPLAR_FRACTION = 0.05  # 5% of the test split (at least one example)


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> list[float | None]:
    """Top-1 accuracy of each class; None for a class with no example."""
    pred = logits.argmax(dim=1)
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else None)
    return out


def worst_class_drop_pp(baseline: list[float | None], compressed: list[float | None]
                        ) -> tuple[float, int]:
    """The largest per-class accuracy drop from baseline to compressed, in percentage
    points (negative if every class improved), and the class it happens in."""
    drops = [(100.0 * (b - c), i) for i, (b, c) in enumerate(zip(baseline, compressed,
                                                                  strict=True))
             if b is not None and c is not None]
    drop, cls = max(drops, key=lambda t: (t[0], -t[1]))
    return drop, cls


def agreement(logits: torch.Tensor, baseline_logits: torch.Tensor) -> float:
    """Fraction of examples where the top-1 predictions of the two models are equal."""
    return float((logits.argmax(1) == baseline_logits.argmax(1)).float().mean())


def exemplars(logits: torch.Tensor, baseline_logits: torch.Tensor,
              fraction: float = EXEMPLAR_FRACTION) -> torch.Tensor:
    """Indices of the ``fraction`` of examples (at least one) with the largest
    total-variation distance between the two models' softmax outputs; ties keep the
    earlier example."""
    tv = 0.5 * (logits.softmax(1) - baseline_logits.softmax(1)).abs().sum(1)
    k = max(1, math.ceil(fraction * len(tv)))
    order = torch.sort(tv, descending=True, stable=True).indices
    return order[:k]


def per_class_metrics(inputs: Any) -> dict[str, Any]:
    """``per_class`` group: ``per_class_accuracy`` (list, one per class),
    ``worst_class_accuracy``, ``worst_class`` and ``worst_class_drop_pp`` against the
    baseline's per-class accuracy."""
    labels, n = inputs.data.test.y, inputs.data.num_classes
    mine = per_class_accuracy(inputs.logits, labels, n)
    base = per_class_accuracy(inputs.reference.test_logits, labels, n)
    drop, cls = worst_class_drop_pp(base, mine)
    present = [a for a in mine if a is not None]
    return {"per_class_accuracy": mine, "worst_class_accuracy": min(present),
            "worst_class": cls, "worst_class_drop_pp": drop}


def agreement_metrics(inputs: Any) -> dict[str, Any]:
    """``agreement`` group: top-1 ``agreement`` with the baseline over the test split, and
    on the exemplars (5% of the test split) the compressed model's accuracy
    (``exemplar_accuracy``) and the baseline's (``exemplar_baseline_accuracy``)."""
    labels, base = inputs.data.test.y, inputs.reference.test_logits
    idx = exemplars(inputs.logits, base)
    acc = float((inputs.logits[idx].argmax(1) == labels[idx]).float().mean())
    base_acc = float((base[idx].argmax(1) == labels[idx]).float().mean())
    return {"agreement": agreement(inputs.logits, base), "exemplar_accuracy": acc,
            "exemplar_baseline_accuracy": base_acc, "exemplar_count": len(idx)}
