"""Quantisation-aware fine-tuning: low-bit layers train on the grid they end up on.

Without it, a trial fine-tunes in float and ``quantize_weights`` rounds the weights once
afterwards, which at 2-4 bits moves them far from what was trained. Inside
:func:`quantization_aware` every layer ``quantize_weights`` will round (the same set:
:func:`slimtune.compress.fake_quantized_layers`) computes its forward pass with its weight
rounded by :func:`slimtune.compress.fake_quantize` (symmetric, per output channel, scale
from the current weights); gradients pass the rounding unchanged (straight-through
estimator, Bengio et al. 2013) to the float weights, which SGD keeps updating. On exit
each weight is left at its rounded value, so the final ``quantize_weights`` changes
nothing and the model that is evaluated is the model that was trained.

The rounding is a ``torch.nn.utils.parametrize`` parametrization on ``weight``: the
float weights are the parametrization's ``original`` while the block runs (an optimizer
made inside the block trains them), and a plain ``weight`` parameter again after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.compress import PolicyError, fake_quantize, fake_quantized_layers
from slimtune.layers import LayerTable
from slimtune.lowrank import layer_modules
from slimtune.policy import Policy

__all__ = ["FakeQuantized", "quantization_aware"]


class _RoundStraightThrough(torch.autograd.Function):
    """``fake_quantize`` forward, identity backward (nothing is clipped: the scale comes
    from the channel's largest weight, so every weight lies inside the grid)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int) -> torch.Tensor:  # noqa: ARG004
        return fake_quantize(weight, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


class FakeQuantized(nn.Module):
    """The parametrization: ``weight`` seen through a ``bits``-bit grid."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _RoundStraightThrough.apply(weight, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


@contextlib.contextmanager
def quantization_aware(model: nn.Module, table: LayerTable, policy: Policy, *,
                       include_8bit: bool = False) -> Iterator[None]:
    """Around a trial's fine-tune: the layers ``quantize_weights(model, table, policy,
    include_8bit=...)`` rounds train fake-quantised; on exit their weights keep the
    rounded values and the parametrizations are gone. A no-op for a policy without such
    layers. A factorised layer's two factors are each trained at the layer's bits.

    Build the optimizer inside the block: while it runs, each such layer's trainable
    tensor is ``parametrizations.weight.original`` (the same Parameter object as before).
    """
    names = {li.name for li in table.layers}
    rounded: list[tuple[nn.Module, int]] = []  # every module found before any is changed
    for name, bits in sorted(fake_quantized_layers(policy, include_8bit=include_8bit).items()):
        if name not in names:
            raise PolicyError(f"policy sets bits of unknown layer {name!r}")
        # layer_modules raises PolicyError when the model has no such layer
        rounded += [(module, bits) for module in layer_modules(model, name).values()]
    done: list[nn.Module] = []
    try:
        for module, bits in rounded:
            parametrize.register_parametrization(module, "weight", FakeQuantized(bits))
            done.append(module)
        yield
    finally:
        for module in done:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
