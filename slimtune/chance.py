"""A baseline that learnt nothing: accuracy at chance level, refused before the search.

Compressing a model that predicts one class for every image (an EfficientNet trained by
a recipe that does not suit it) gives a search whose every trial ties with the baseline:
an answer that looks fine and means nothing. Chance is the larger of 1 / classes and the
share of the validation split's most frequent class (what predicting that class for
everything scores); the baseline must beat it by three binomial standard errors.
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from slimtune.errors import UserInputError

MIN_EXAMPLES = 50  # fewer validation examples: a warning, not a refusal


class ChanceBaselineError(UserInputError):
    """The baseline's validation accuracy is not clearly above chance."""


def chance_accuracy(labels: np.ndarray, num_classes: int) -> float:
    """What a model that learnt nothing scores: the best constant guess, at least 1/classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return max(1.0 / num_classes, float(counts.max()) / max(len(labels), 1))


def chance_margin(chance: float, n: int) -> float:
    """Three binomial standard errors of an accuracy of ``chance`` over ``n`` examples."""
    return 3.0 * math.sqrt(chance * (1.0 - chance) / max(n, 1))


def vanishing_norms(model: nn.Module) -> str:
    """A hint when the model's norm layers scale activations by almost nothing: transformers
    5.x initialises EfficientNet's and MobileViT's BatchNorm weights from N(0, 0.02), so a
    model built from a config (no weights) multiplies its signal by ~0.02 a layer and its
    gradients vanish; "" when the scales look trained or default (1)."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm)
             and getattr(m, "weight", None) is not None]
    if not norms:
        return ""
    scale = float(np.median([m.weight.detach().abs().mean().item() for m in norms]))
    if scale >= 0.1:
        return ""
    return (f"; its norm layers' scales are near 0 (median mean |weight| {scale:.3g}), as a "
            "from-config init may leave them: set them to 1 (reset_parameters() on each "
            "norm layer) or load trained weights")


def check_above_chance(logits: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       source: str, hint: str = "") -> str | None:
    """ChanceBaselineError (one line) unless the validation accuracy of ``logits`` is
    clearly above chance; ``source`` says where the baseline came from, ``hint`` (e.g.
    :func:`vanishing_norms`) is added to the message.

    Below ``MIN_EXAMPLES`` validation examples chance cannot be told from a model that
    learnt little: the answer is then a warning line to print, not a refusal.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(logits).argmax(axis=1)
    n = len(labels)
    accuracy = float((predicted == labels).mean()) if n else 0.0
    chance = chance_accuracy(labels, num_classes)
    if n == 0 or accuracy > chance + chance_margin(chance, n):
        return
    if n < MIN_EXAMPLES:
        return f"only {n} validation examples: whether the baseline (val accuracy " \
            f"{accuracy:.4f}) beats chance ({chance:.4f}) cannot be told; searching anyway"
    counts = np.bincount(predicted, minlength=num_classes)
    top = int(counts.argmax())
    fix = ("check the weights file" if source == "weights" else
           "train it better: raise baseline.epochs or change baseline.lr, or give your own "
           "model.weights")
    raise ChanceBaselineError(
        f"the baseline is at chance level: val accuracy {accuracy:.4f} against chance "
        f"{chance:.4f} ({num_classes} classes, {n} examples), and it predicts class {top} "
        f"for {counts[top] / n:.0%} of them{hint}; compressing it would mean nothing: {fix}, "
        "or set baseline.allow_chance: true to search anyway")
