"""Weight quantization: each ``policy.bits`` layer keeps that many bits. Layers at 8 bits
or fewer run as real int8 in an int8 runtime (QDQ ONNX, :mod:`slimtune.export`); below 8
bits, and on a runtime without int8, weights are fake-quantized per output channel, and
quantisation-aware training (``finetune.qat``, :mod:`slimtune.qat`) trains them so."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from torch import nn

from slimtune.compress import quantize_weights, runs_int8
from slimtune.layers import LayerTable
from slimtune.lowrank import layer_modules
from slimtune.methods.base import CompressionMethod
from slimtune.policy import Policy
from slimtune.qat import quantization_aware

if TYPE_CHECKING:
    from slimtune.spec import FinetuneSpec

class WeightQuantization(CompressionMethod):
    name = "quantization"
    policy_keys = ("bits",)
    stage = "weights"

    def during_finetune(self, model: nn.Module, table: LayerTable, policy: Policy,
                        recipe: FinetuneSpec, *, include_8bit: bool) -> AbstractContextManager:
        if not recipe.qat:
            return contextlib.nullcontext()
        return quantization_aware(model, table, policy, include_8bit=include_8bit)

    def transform_weights(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                          include_8bit: bool = False) -> nn.Module:
        return quantize_weights(model, table, policy, include_8bit=include_8bit)

    @staticmethod
    def int8_layers(policy: Policy) -> list[str]:
        """The layers an int8 runtime runs as int8 (the rest stay float)."""
        return sorted(n for n, b in policy.bits.items() if runs_int8(b))


def int8_layers(policy: Policy, model: nn.Module | None = None) -> list[str]:
    """Modules that run int8 in ONNX Runtime: every layer stored at 8 bits or fewer.

    Given the compressed ``model``, a factorised layer counts as its two factors
    (``name.0``, ``name.1``: both run int8); without it, the policy's layer names.
    """
    names = WeightQuantization.int8_layers(policy)
    if model is None:
        return names
    return [m for name in names for m in layer_modules(model, name)]
