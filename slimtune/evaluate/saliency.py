"""Explanations: how similar the compressed model's input-gradient saliency maps are to
the baseline's, on a fixed sample.

A map is ``|d logit_y / d x|`` summed over input channels (Simonyan et al. 2014), for
the true class ``y`` (both models answer the same question). Similarity is Spearman's
rank correlation between the two flattened maps of an example (average ranks for ties;
0 when a map is constant), averaged over ``SALIENCY_SIZE`` examples: the first of the
test split. Gradients need the torch model: the fine-tuned model with its quantised
weights fake-quantised (see ``slimtune.evaluate.robustness``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

SALIENCY_SIZE = 64
SALIENCY_KEPT = 8  # maps saved for the report


def input_gradient_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """N x H x W maps: absolute gradient of the true-class logit, summed over channels."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    return grad.abs().sum(1).detach()


def rank_correlation(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman's rho of two arrays of equal size (flattened); 0 if either is constant."""
    ra = rankdata(np.asarray(a, dtype=float).ravel())
    rb = rankdata(np.asarray(b, dtype=float).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def saliency_maps(model: nn.Module, data: Any) -> torch.Tensor:
    """The maps of ``model`` on the fixed sample (first ``SALIENCY_SIZE`` test examples)."""
    test = data.test
    sample = test.head(SALIENCY_SIZE)
    return input_gradient_saliency(model, sample.x, sample.y)


def saliency_metrics(inputs: Any) -> dict[str, Any]:
    """``saliency`` group: ``saliency_rank_corr``, the mean rank correlation with the
    baseline's maps; the first ``SALIENCY_KEPT`` maps come back as ``saliency_maps`` (a
    tensor: an artefact for the report, not a row key)."""
    mine = saliency_maps(inputs.model, inputs.data)
    base = inputs.reference.saliency
    corr = float(np.mean([rank_correlation(a, b) for a, b in zip(mine, base, strict=True)]))
    return {"saliency_rank_corr": corr, "saliency_maps": mine[:SALIENCY_KEPT]}
