"""SupernetEvaluator: scores policies as sub-networks of one trained weight-sharing supernet.

Built once per (baseline, table, space, recipe): the channel order is ranked on the
baseline, the masked supernet trained by the sandwich rule (or loaded from the cache),
and then each ``score`` only sets masks, recalibrates BatchNorm on ``recal_batches``
training batches and counts top-1 hits on the first ``val_size`` validation examples:
no copy of the model, no weight update. ``model`` hands the final stage the same
sub-network with its channels really removed.

Example::

    evaluator = SupernetEvaluator.build(baseline, table, space, data.train, data.val,
                                        round_to=8, recipe=SandwichRecipe(steps=300))
    scores = evaluator.score_many(policies)
    start = evaluator.model(best)  # fine-tune this
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from slimtune.baseline import cache_dir
from slimtune.compress import PolicyError
from slimtune.data import Split
from slimtune.evaluators.base import Evaluator
from slimtune.evaluators.bn import recalibrate_bn
from slimtune.evaluators.supernet.cache import FORMAT, read_payload, supernet_key, write_payload
from slimtune.evaluators.supernet.elastic import MaskedSupernet, channel_order
from slimtune.evaluators.supernet.sandwich import SandwichRecipe, train_supernet
from slimtune.layers import LayerTable
from slimtune.methods.apply import check_policy
from slimtune.objective import CLASSIFICATION, evaluate_split
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.train import predict

__all__ = ["SupernetEvaluator", "supernet_cache_dir"]


def supernet_cache_dir() -> Path:
    """Where trained supernets and their checkpoints live by default."""
    return cache_dir() / "supernets"


class SupernetEvaluator(Evaluator):
    """Validation-subset accuracy of a policy's sub-network of a trained supernet.

    ``score(policy)``: masks set to the policy (ratios rounded by ``group_kept`` with the
    supernet's ``round_to``), its layers below 32 bits fake-quantized (8-bit too, as the
    episode proxy does), BN recalibrated on ``recal_batches`` batches of ``batch_size``
    training examples, top-1 on the first ``val_size`` val examples. Memoised by ``Policy.key()``.
    ``model(policy)``: the float sub-network, channels removed in the fixed order, BN
    recalibrated the same way, eval mode; a new module each call.
    """

    name = "supernet"

    def __init__(self, supernet: MaskedSupernet, train_split: Split, val_split: Split, *,
                 val_size: int = 1000, recal_batches: int = 20, batch_size: int = 64) -> None:
        self.supernet = supernet
        self.train_split = train_split
        self.val_split = val_split
        self.val_size = min(val_size, len(val_split))
        self.recal_batches = recal_batches
        self.batch_size = batch_size
        self.objective = CLASSIFICATION  # the score: top-1, or the spec's metric
        self.cache: dict[str, float] = {}
        self.key = ""  # the supernet's cache key, and its file (None: not cached)
        self.path: Path | None = None

    @classmethod
    def build(cls, baseline: nn.Module, table: LayerTable, space: SearchSpace,
              train_split: Split, val_split: Split, *, round_to: int = 1,
              recipe: SandwichRecipe | None = None, val_size: int = 1000,
              recal_batches: int = 20, cache: Path | bool = True, checkpoint_every: int = 50,
              on_step: Callable[[int, list[Policy]], None] | None = None,
              ) -> SupernetEvaluator:
        """Rank channels on ``baseline`` (not changed), then train the supernet from a copy
        of it, or load it from ``cache`` (True: :func:`supernet_cache_dir`; a folder; False:
        no files). Training checkpoints there every ``checkpoint_every`` steps and resumes
        after a kill. ``round_to`` must be the one ``space`` was built with."""
        recipe = recipe or SandwichRecipe()
        extra = [name for name, dims in (("rank", space.rank), ("sparsity", space.sparsity),
                                         ("clusters", space.clusters)) if dims]
        if extra:
            raise PolicyError(f"the supernet evaluator scores prune ratios and bit-widths "
                              f"only; the space also searches {', '.join(extra)}: use the "
                              "bn_recal evaluator")
        order = channel_order(baseline, table)
        supernet = MaskedSupernet(copy.deepcopy(baseline), table, order, round_to=round_to)
        key = supernet_key(baseline, table, space, order,
                           {**recipe.to_dict(), "round_to": round_to}, train_split)
        folder = supernet_cache_dir() if cache is True else (Path(cache) if cache else None)
        final = folder / f"{key}.pt" if folder else None
        if final is not None and final.is_file():
            payload = read_payload(final, kind="supernet", key=key, table=table,
                                   model=supernet.model)
            supernet.model.load_state_dict(payload["model"])
            supernet.largest().eval()
        else:
            checkpoint = folder / f"{key}.ckpt" if folder else None
            train_supernet(supernet, space, train_split, recipe, key=key,
                           teacher=copy.deepcopy(baseline).eval(), checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, on_step=on_step)
            if final is not None and checkpoint is not None:
                write_payload(final, {"format": FORMAT, "kind": "supernet", "key": key,
                                      "signature": table.signature(),
                                      "model": supernet.model.state_dict(),
                                      "order": {g: list(o) for g, o in order.items()},
                                      "recipe": recipe.to_dict()})
                checkpoint.unlink(missing_ok=True)
        evaluator = cls(supernet, train_split, val_split, val_size=val_size,
                        recal_batches=recal_batches, batch_size=recipe.batch_size)
        evaluator.key, evaluator.path = key, final
        return evaluator

    @property
    def scored_examples(self) -> int | None:
        return self.val_size if self.objective.top1 else None

    def score(self, policy: Policy) -> float:
        key = policy.key()
        if key not in self.cache:
            self.cache[key] = self._score(policy)
        return self.cache[key]

    def _score(self, policy: Policy) -> float:
        _check(self.supernet.table, policy)
        supernet = self.supernet.set_policy(policy)
        with supernet.quantized(policy):
            self._recalibrate()
            val = self.val_split.first(self.val_size)
            return evaluate_split(self.objective, lambda x: predict(supernet, x), val)[0]

    def model(self, policy: Policy) -> nn.Module:
        _check(self.supernet.table, policy)
        self.supernet.set_policy(policy)
        self._recalibrate()
        return self.supernet.extract().eval()

    def _recalibrate(self) -> None:
        recalibrate_bn(self.supernet, self.train_split, batches=self.recal_batches,
                       batch_size=self.batch_size)


def _check(table: LayerTable, policy: Policy) -> None:
    """PolicyError unless ``policy`` fits ``table`` and sets only what a supernet has."""
    check_policy(table, policy)
    if policy.rank or policy.sparsity or policy.clusters:
        raise PolicyError("the supernet evaluator scores prune ratios and bit-widths only, "
                          "not rank, sparsity or clusters")
