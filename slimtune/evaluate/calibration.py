"""Calibration of the deployed model on the whole test split: ECE (15 bins) and NLL."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor,
                     bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins ``(lo, hi]`` (the first also holds 0): for each, the
    number of examples, their mean confidence (top softmax probability) and accuracy."""
    probs = logits.double().softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mask = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        n = int(mask.sum())
        out.append({"lo": lo, "hi": hi, "count": n,
                    "confidence": float(conf[mask].mean()) if n else 0.0,
                    "accuracy": float(correct[mask].mean()) if n else 0.0})
    return out


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin size / N) * |accuracy - mean confidence| (Guo et al. 2017)."""
    return _ece(reliability_bins(logits, labels, bins))


def _ece(bins: list[dict[str, float]]) -> float:
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the true labels, in nats."""
    return float(F.cross_entropy(logits.double(), labels))


def calibration_metrics(inputs: Any) -> dict[str, Any]:
    """``calibration`` group: ``ece`` (15 equal-width bins), ``nll`` (nats) and the bins
    themselves as ``reliability_bins`` (for the reliability diagram), whole test split."""
    logits, labels = inputs.logits, inputs.data.test.y
    bins = reliability_bins(logits, labels)
    return {"ece": _ece(bins), "nll": negative_log_likelihood(logits, labels),
            "reliability_bins": bins}
