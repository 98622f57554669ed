"""A trial's fine-tune recipe: what trains a compressed model before it is evaluated.

The recipe is the spec's ``finetune`` section with the part a search sampled
(``Policy.recipe``: ``distill``, ``temperature``, ``alpha``) put over it. Around the
training loop (:func:`slimtune.train.train`, knowledge distillation from the baseline
when ``distill``), optional parts compose as context managers:

- each compression method's ``during_finetune`` (:mod:`slimtune.methods`), in registry
  order: Deep Compression's held zeros and shared weights (a no-op without them), then
  quantisation-aware training (``qat``, :mod:`slimtune.qat`);
- FitNets hints (``hint_weight > 0``, :mod:`slimtune.hints`): only when distilling, they
  match the baseline teacher's features; a trial whose sampled ``distill`` is false
  trains without them.
"""

from __future__ import annotations

import contextlib

from torch import nn

from slimtune.device import training_device
from slimtune.hints import feature_hints, hint_layer_names
from slimtune.layers import LayerTable
from slimtune.methods.registry import methods
from slimtune.objective import Objective
from slimtune.policy import Policy
from slimtune.spec import FinetuneSpec, JobSpec
from slimtune.split import Split
from slimtune.teacher_outputs import TeacherOutputs
from slimtune.train import train

__all__ = ["finetune", "finetune_recipe"]


def finetune_recipe(spec: FinetuneSpec, policy: Policy) -> FinetuneSpec:
    """``spec`` with the values the policy carries in ``recipe`` in place of its own."""
    return spec.model_copy(update=dict(policy.recipe))


def finetune(model: nn.Module, teacher: nn.Module, table: LayerTable, policy: Policy,
             spec: JobSpec, split: Split, *, seed: int,
             teacher_outputs: TeacherOutputs | None = None) -> nn.Module:
    """Fine-tune the compressed ``model`` in place by the recipe; returns it in eval mode.

    ``teacher`` is the baseline; it is used only if the recipe distils (its outputs on
    ``split`` looked up in ``teacher_outputs`` where given). Quantisation-aware
    training rounds the layers ``quantize_weights`` will round for ``spec.target``.
    """
    ft = finetune_recipe(spec.finetune, policy)
    distill_from = teacher if ft.distill else None
    with contextlib.ExitStack() as stack:
        for method in methods():  # Deep Compression's held zeros, QAT's fake-quant, ...
            stack.enter_context(method.during_finetune(
                model, table, policy, ft, include_8bit=not spec.target.backend.int8))
        hints = None
        if distill_from is not None and ft.hint_weight > 0:
            hints = stack.enter_context(feature_hints(
                model, distill_from, table, hint_layer_names(table, ft.hint_layers),
                weight=ft.hint_weight, example=split.head(ft.batch_size).x))
        train(model, split, steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr, seed=seed,
              teacher=distill_from, temperature=ft.temperature, alpha=ft.alpha, hints=hints,
              device=training_device(spec.train.device), objective=Objective.of(spec),
              teacher_outputs=teacher_outputs)
    return model.eval()
