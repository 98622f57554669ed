"""Run the selected metric groups for one model, against the baseline's reference.

``baseline_reference`` is computed once per job (the baseline's test logits and
saliency maps, and the baseline's own metrics); ``evaluate_behaviour`` runs each
selected group on one compressed model. Values that are tensors (saliency maps) come
back as ``arrays`` (artefacts for the report), everything else as row ``metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from slimtune.evaluate.registry import GROUPS

#: the deployed model's logits on a tensor of inputs or on a whole split (streamed)
LogitsFn = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class BehaviourReference:
    """What the baseline contributes to every trial's comparison; shipped to workers."""

    test_logits: torch.Tensor  # the deployed baseline's logits on the whole test split
    saliency: torch.Tensor | None = None  # maps on the saliency sample, when selected
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the baseline's own metrics


@dataclass(frozen=True)
class EvalInputs:
    """What a group function reads. ``logits`` are the deployed model's on the test split;
    ``logits_fn`` runs the deployed model; ``model`` is the torch model for gradients."""

    logits: torch.Tensor
    data: Any  # slimtune.data.Dataset
    logits_fn: LogitsFn
    model: nn.Module | None
    reference: BehaviourReference | None


@dataclass(frozen=True)
class Behaviour:
    metrics: dict[str, Any]
    arrays: dict[str, torch.Tensor]


def evaluate_behaviour(groups: Iterable[str], inputs: EvalInputs) -> Behaviour:
    """Run the named groups (registry order); ``evaluate_seconds`` is their total time."""
    wanted = set(groups)
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    arrays: dict[str, torch.Tensor] = {}
    for group in GROUPS.values():
        if group.name not in wanted:
            continue
        for key, value in group.load()(inputs).items():
            (arrays if isinstance(value, torch.Tensor) else metrics)[key] = value
    if wanted:
        metrics["evaluate_seconds"] = time.perf_counter() - start
    return Behaviour(metrics, arrays)


def baseline_reference(groups: Iterable[str], *, model: nn.Module, logits_fn: LogitsFn,
                       data: Any) -> BehaviourReference:
    """The reference every trial compares with, including the baseline's own metrics
    (agreement 1, worst-class drop 0, saliency correlation 1 by construction; no
    exemplar figures)."""
    from slimtune.evaluate.saliency import saliency_maps

    groups = tuple(groups)
    logits = logits_fn(data.test)
    ref = BehaviourReference(logits, saliency_maps(model, data) if "saliency" in groups
                             else None)
    own = evaluate_behaviour(groups, EvalInputs(logits, data, logits_fn, model, ref)).metrics
    for key in ("exemplar_accuracy", "exemplar_baseline_accuracy", "exemplar_count"):
        own.pop(key, None)  # no divergence from itself: no exemplars to speak of
    return replace(ref, metrics=own)
