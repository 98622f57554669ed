"""Robustness: accuracy under FGSM, a few-step PGD, and Gaussian noise, on a test subset.

Epsilons are L-infinity radii in the model's *input units* (the normalised inputs the
model sees; for Fashion-MNIST one unit is 0.353 of the [0, 1] pixel range, so
``ATTACK_EPS = 0.05`` is 0.0177 in pixels, 4.5/255). Adversarial inputs are not clipped
to the pixel range.

The attacks need gradients, so they run on the fine-tuned torch model with every
quantised layer's weights fake-quantised (8-bit layers included); activations stay
fp32, so this is the deployed int8 model up to activation rounding. Gaussian noise
needs no gradient and runs on the deployed model itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROBUST_SIZE = 500  # the first 500 test examples
ATTACK_EPS = 0.05  # L-inf radius, input units
PGD_STEPS = 5
PGD_STEP_SIZE = 2.5 * ATTACK_EPS / PGD_STEPS  # Madry et al.'s 2.5 * eps / steps
NOISE_STD = 0.25  # Gaussian noise std, input units; fixed seed
NOISE_SEED = 0
_BATCH = 250


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Goodfellow et al. 2015: one signed-gradient step of size ``eps``."""
    return (x + eps * _input_grad(model, x, y).sign()).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
        step_size: float) -> torch.Tensor:
    """Madry et al. 2018, L-inf, started at ``x`` (no random start, so deterministic)."""
    adv = x.clone()
    for _ in range(steps):
        adv = adv + step_size * _input_grad(model, adv, y).sign()
        adv = (x + (adv - x).clamp(-eps, eps)).detach()
    return adv


def _accuracy(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              y: torch.Tensor) -> float:
    return float((logits_fn(x).argmax(1) == y).float().mean())


def attack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attack: Callable[..., torch.Tensor]) -> float:
    """Accuracy of ``model`` on ``attack(model, x, y)``, in batches."""
    model.eval()
    correct = 0
    for i in range(0, len(x), _BATCH):
        xb, yb = x[i:i + _BATCH], y[i:i + _BATCH]
        with torch.no_grad():
            correct += int((model(attack(model, xb, yb)).argmax(1) == yb).sum())
    return correct / len(x)


def robustness_metrics(inputs: Any) -> dict[str, Any]:
    """``robustness`` group on the first ``ROBUST_SIZE`` test examples:
    ``robust_clean_accuracy`` (the torch model, no attack), ``fgsm_accuracy`` and
    ``pgd_accuracy`` (L-inf ``ATTACK_EPS``; PGD ``PGD_STEPS`` steps) on the torch model,
    ``noise_accuracy`` (Gaussian, std ``NOISE_STD``) on the deployed model."""
    test = inputs.data.test
    x, y = test.head(ROBUST_SIZE)
    model = inputs.model
    g = torch.Generator().manual_seed(NOISE_SEED)
    noisy = x + NOISE_STD * torch.randn(x.shape, generator=g)
    return {
        "robust_clean_accuracy": attack_accuracy(model, x, y, lambda m, a, b: a),
        "fgsm_accuracy": attack_accuracy(
            model, x, y, lambda m, a, b: fgsm(m, a, b, ATTACK_EPS)),
        "pgd_accuracy": attack_accuracy(
            model, x, y, lambda m, a, b: pgd(m, a, b, ATTACK_EPS, PGD_STEPS, PGD_STEP_SIZE)),
        "noise_accuracy": _accuracy(inputs.logits_fn, noisy, y),
    }
