"""Builds the evaluator a job or an env asks for by name (``bn_recal`` or ``supernet``).

One place for the settings each evaluator takes from the spec (``scoring``,
``supernet``, ``space.round_to``, ``target.threads``), so a scoring search and the AMC
env score a policy the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimtune.data import Dataset
from slimtune.evaluators.base import Evaluator
from slimtune.layers import LayerTable
from slimtune.measurement.latency import machine_lock
from slimtune.objective import Objective
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec

#: evaluators built from a trained baseline without fine-tuning
SCORING_EVALUATORS = ("bn_recal", "supernet")


def build_evaluator(kind: str, spec: JobSpec, baseline: nn.Module, table: LayerTable,
                    data: Dataset, space: SearchSpace | None = None,
                    say: Callable[[str], None] = lambda _m: None, *,
                    val_size: int | None = None,
                    recal_batches: int | None = None) -> Evaluator:
    """The ``kind`` evaluator of ``baseline`` (not changed) for ``space``; a supernet is
    trained once per (baseline, space, recipe) and cached, or loaded from the cache
    (``space`` is needed for it: the supernet's sandwich samples from it). ``val_size``
    and ``recal_batches`` replace the ``scoring`` section's (the env scores with its own)."""
    if kind not in SCORING_EVALUATORS:
        raise ValueError(f"unknown evaluator {kind!r}; choose one of {SCORING_EVALUATORS}")
    if kind == "bn_recal":
        from slimtune.evaluators.bn_recal import BNRecalEvaluator, ScoreSettings

        sc = spec.scoring
        settings = ScoreSettings(recal_batches=recal_batches or sc.recal_batches,
                                 batch_size=sc.batch_size, val_size=val_size or sc.val_size)
        return BNRecalEvaluator(baseline, table, data.train, data.val,
                                round_to=spec.space.round_to, settings=settings,
                                threads=spec.target.threads, objective=Objective.of(spec))
    if space is None:
        raise ValueError("the supernet evaluator needs the search space it samples from")
    import torch

    from slimtune.evaluators.supernet import SandwichRecipe, SupernetEvaluator

    sn = spec.supernet
    recipe = SandwichRecipe(steps=sn.steps, batch_size=sn.batch_size, lr=sn.lr,
                            n_random=sn.random_subnets, seed=spec.search.seed,
                            temperature=spec.finetune.temperature)

    def step(n: int, _policies: object) -> None:
        if n % 100 == 0 or n == sn.steps:
            say(f"supernet: sandwich step {n}/{sn.steps}")

    torch.set_num_threads(spec.target.threads)
    with machine_lock("shared"):
        evaluator = SupernetEvaluator.build(
            baseline, table, space, data.train, data.val, round_to=spec.space.round_to,
            recipe=recipe, val_size=val_size or spec.scoring.val_size,
            recal_batches=recal_batches or spec.scoring.recal_batches, on_step=step)
    evaluator.batch_size = spec.scoring.batch_size
    evaluator.objective = Objective.of(spec)
    return evaluator
