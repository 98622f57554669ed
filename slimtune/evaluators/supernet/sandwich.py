"""Sandwich-rule training of the masked supernet (slimmable networks, BigNAS).

Each step, from the baseline's weights on: the largest sub-network the space allows
(hard labels, plus knowledge distillation from the frozen baseline when given), the
smallest, and ``n_random`` sub-networks drawn from the space's choices (in-place
distillation: KL to the largest's detached logits) each run forward and backward on the
same batch; their gradients add up and one SGD step (momentum, cosine schedule) follows.

With ``quantize`` (default) and bit-widths in the space, the random sub-networks also
draw one bit-width per layer from its choices and the smallest takes the lowest of each;
a layer below 32 bits (8 included) then runs fake-quantized, straight-through: the
forward and backward see the rounded weights (per output channel, scale over the kept
input channels, as the extracted model is rounded), the gradient updates the float ones.
The largest stays in float: it is the teacher of the others.

Everything a step draws is a function of (seed, step): the batch (an epoch's seeded
permutation) and the random sub-networks. So a checkpoint (weights, optimizer state,
step; every ``checkpoint_every`` steps, atomic) is all a resumed run needs to continue
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.evaluators.supernet.cache import FORMAT, read_payload, write_payload
from slimtune.evaluators.supernet.elastic import MaskedSupernet
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.split import IndexBatches, Split
from slimtune.train import distillation_loss

__all__ = ["SandwichRecipe", "largest_policy", "random_policy", "sandwich_step",
           "smallest_policy", "train_supernet"]


@dataclass(frozen=True)
class SandwichRecipe:
    """How the supernet trains. ``alpha``/``temperature``: the largest sub-network's
    distillation from the baseline (``distill_baseline``); the others distil from the
    largest at ``inplace_temperature``."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 0.01
    n_random: int = 2
    seed: int = 0
    weight_decay: float = 5e-5
    distill_baseline: bool = True
    temperature: float = 4.0
    alpha: float = 0.5
    inplace_temperature: float = 1.0
    quantize: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.n_random < 0 or not self.lr > 0:
            raise ValueError(f"bad sandwich recipe {self}")

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def largest_policy(space: SearchSpace) -> Policy:
    """Every group at its smallest prune ratio (the full model when 0 is a choice), every
    layer at its highest bit-width."""
    return space.policy_from_params({**{f"prune.{g}": min(rs) for g, rs in space.ratios.items()},
                                     **{f"bits.{n}": max(bs) for n, bs in space.bits.items()}})


def smallest_policy(space: SearchSpace, *, quantize: bool = True) -> Policy:
    """Every group at its largest prune ratio, every droppable block dropped; with
    ``quantize``, every layer at its lowest bit-width (else 32)."""
    bits = {f"bits.{n}": min(bs) if quantize else 32 for n, bs in space.bits.items()}
    return space.policy_from_params({**{f"prune.{g}": max(rs) for g, rs in space.ratios.items()},
                                     **bits, **{f"skip.{b}": 1 for b in space.skip}})


def random_policy(space: SearchSpace, rng: random.Random, *, quantize: bool = True) -> Policy:
    """One ratio per group, (with ``quantize``) one bit-width per layer and each droppable
    block kept or dropped, uniform over the space's choices."""
    params: dict[str, float | int] = {f"prune.{g}": rng.choice(rs)
                                      for g, rs in sorted(space.ratios.items())}
    if quantize:
        params.update((f"bits.{n}", rng.choice(bs)) for n, bs in sorted(space.bits.items()))
    params.update((f"skip.{b}", rng.choice((0, 1))) for b in space.skip)
    return space.policy_from_params(params)


def step_policies(space: SearchSpace, recipe: SandwichRecipe, step: int) -> list[Policy]:
    """The sub-networks trained at ``step``: largest, smallest, then the random ones."""
    rng = random.Random(recipe.seed * 1_000_003 + step)
    q = recipe.quantize
    return [largest_policy(space), smallest_policy(space, quantize=q),
            *(random_policy(space, rng, quantize=q) for _ in range(recipe.n_random))]


def step_batches(n: int, batch_size: int, seed: int, start: int, steps: int) -> IndexBatches:
    """The examples of steps ``start .. steps-1``: step ``s`` takes batch ``s % per_epoch``
    of epoch ``s // per_epoch``'s seeded permutation (so a resumed run sees the same)."""
    size = min(batch_size, n)
    per_epoch = n // size

    def batches():
        order, current = None, None
        for step in range(start, steps):
            epoch, i = divmod(step, per_epoch)
            if epoch != current:
                generator = torch.Generator().manual_seed(seed * 7919 + epoch)
                order, current = torch.randperm(n, generator=generator), epoch
            yield order[i * size:(i + 1) * size].tolist()

    return IndexBatches(batches, max(steps - start, 0))


def sandwich_step(supernet: MaskedSupernet, x: torch.Tensor, y: torch.Tensor,
                  policies: Sequence[Policy], *, recipe: SandwichRecipe,
                  teacher: nn.Module | None = None) -> float:
    """Forward and backward of each policy's sub-network on (x, y), gradients added up
    (no optimizer step); the first policy is the largest, the rest distil from it.
    Returns the summed loss."""
    supernet.set_policy(policies[0])
    with supernet.quantized(policies[0]):  # backward inside: straight-through
        logits = supernet(x)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x)
            loss = distillation_loss(logits, target, y, temperature=recipe.temperature,
                                     alpha=recipe.alpha)
        else:
            loss = F.cross_entropy(logits, y)
        loss.backward()
    total = float(loss.detach())
    soft = logits.detach()
    t = recipe.inplace_temperature
    for policy in policies[1:]:
        supernet.set_policy(policy)
        with supernet.quantized(policy):
            sub = supernet(x)
            loss = F.kl_div(F.log_softmax(sub / t, dim=1), F.softmax(soft / t, dim=1),
                            reduction="batchmean") * (t * t)
            loss.backward()
        total += float(loss.detach())
    return total


def train_supernet(supernet: MaskedSupernet, space: SearchSpace, split: Split,
                   recipe: SandwichRecipe, *, key: str, teacher: nn.Module | None = None,
                   checkpoint: Path | None = None, checkpoint_every: int = 50,
                   on_step: Callable[[int, list[Policy]], None] | None = None) -> int:
    """Train ``supernet`` in place for ``recipe.steps`` steps, resuming from
    ``checkpoint`` when it holds a checkpoint of this ``key``; returns the step it
    started from (0: from the baseline). ``on_step(step, policies)`` runs after each
    step (progress, tests). The checkpoint file is left for the caller to remove."""
    params = list(supernet.model.parameters())
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, nesterov=True,
                          weight_decay=recipe.weight_decay)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        payload = read_payload(checkpoint, kind="checkpoint", key=key, table=supernet.table,
                               model=supernet.model)
        supernet.model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        start = int(payload["step"])
    use_teacher = teacher if recipe.distill_baseline else None
    if use_teacher is not None:
        use_teacher.eval()
    supernet.train()
    loader = split.batched(step_batches(len(split), recipe.batch_size, recipe.seed, start,
                                        recipe.steps))
    for step, (x, y) in zip(range(start, recipe.steps), loader, strict=True):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        policies = step_policies(space, recipe, step)
        opt.zero_grad(set_to_none=True)
        sandwich_step(supernet, x, y, policies, recipe=recipe, teacher=use_teacher)
        opt.step()
        done = step + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == recipe.steps):
            write_payload(checkpoint, {"format": FORMAT, "kind": "checkpoint", "key": key,
                                       "signature": supernet.table.signature(), "step": done,
                                       "model": supernet.model.state_dict(),
                                       "optimizer": opt.state_dict()})
        if on_step is not None:
            on_step(done, policies)
    supernet.largest().eval()
    return start
