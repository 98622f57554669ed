"""The compression-method interface: one way of compressing a model, driven by a policy.

In the spirit of torchao's ``quantize_(model, config)`` (the policy is the config) and
Torch-Pruning's ``Importance``: a method owns some of a Policy's per-layer choices
(``policy_keys``: the Policy fields, which are also the policy JSON's keys) and says
what they do at each point of a model's life:

- ``check``: the choices name groups/layers of the model's LayerTable (PolicyError, one
  line, otherwise);
- ``restructure`` (``stage = "structure"``): the architecture the choices give (channels
  removed, blocks dropped, layers factorised), before any training;
- ``during_finetune``: a context manager around the fine-tune (held zeros, fake-quant);
- ``transform_weights`` (``stage = "weights"``): the weight values the deployed model
  has (shared values, rounding), after training;
- ``size_bytes``: the method's own size figure when it defines one (Deep Compression's
  container), else None.

The order methods run in is declared once, in :data:`slimtune.methods.registry.METHODS`.
"""

from __future__ import annotations

import contextlib
from abc import ABC
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.policy import Policy

if TYPE_CHECKING:
    from slimtune.spec import FinetuneSpec

Stage = Literal["structure", "weights"]


class CompressionMethod(ABC):  # noqa: B024 - every hook has a do-nothing default
    """One compression method; subclasses override the hooks they need."""

    name: ClassVar[str]
    policy_keys: ClassVar[tuple[str, ...]]
    stage: ClassVar[Stage]

    def active(self, policy: Policy) -> bool:
        """Whether ``policy`` asks anything of this method."""
        return any(policy.choices(key) for key in self.policy_keys)

    def check(self, table: LayerTable, policy: Policy) -> None:
        """PolicyError unless this method's choices fit ``table`` (default: every key of
        each of its policy fields names a layer of the table)."""
        layers = {li.name for li in table.layers}
        for key in self.policy_keys:
            unknown = sorted(set(policy.choices(key)) - layers)
            if unknown:
                raise PolicyError(f"policy sets {key} of unknown layers: {', '.join(unknown)}")

    def restructure(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                    round_to: int = 1, example_input: torch.Tensor | None = None) -> nn.Module:
        """The model with this method's architecture (may change and return ``model``)."""
        return model

    def during_finetune(self, model: nn.Module, table: LayerTable, policy: Policy,
                        recipe: FinetuneSpec, *, include_8bit: bool) -> AbstractContextManager:
        """What holds while the compressed model fine-tunes (default: nothing)."""
        return contextlib.nullcontext()

    def transform_weights(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                          include_8bit: bool = False) -> nn.Module:
        """In place, the weights the deployed model has (default: unchanged)."""
        return model

    def size_bytes(self, model: nn.Module, table: LayerTable, policy: Policy) -> int | None:
        """The stored size this method defines for ``model``, or None (packed weights)."""
        return None


def names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))
