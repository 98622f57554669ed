"""Low-rank factorisation: a layer replaced by two smaller ones (truncated SVD).

A policy's ``rank[layer]`` is the fraction of the layer's full rank it keeps. A linear
layer ``W (out x in)`` becomes ``Linear(in, r)`` then ``Linear(r, out)``; a conv
``W (out x in x k x k)`` is factorised on its ``(out, in*k*k)`` unfolding (the
Tucker-2 / SVD scheme with the input mode kept whole) into a ``k x k`` conv with ``r``
outputs (same stride, padding, dilation) then a ``1 x 1`` conv to ``out``. Both factors
carry ``sqrt(S)``, the bias goes on the second. The two layers replace the original as
an ``nn.Sequential`` named like it (``layer1.conv1.0``, ``layer1.conv1.1``), so MACs,
parameters and latency drop for real and ONNX export needs nothing special.

Grouped and depthwise convs are not factorised (PolicyError naming the layer): their
weights are already block-diagonal.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.layers import LayerTable

__all__ = ["factorize", "factorized_rank", "worthwhile_rank"]


def factorized_rank(module: nn.Module, fraction: float) -> int:
    """Rank kept at ``fraction`` of the layer's full rank, at least 1."""
    out, cols = _unfolded_shape(module)
    return max(1, round(fraction * min(out, cols)))


def worthwhile_rank(module: nn.Module) -> int:
    """The largest rank at which the two factors have fewer MACs than the layer."""
    out, cols = _unfolded_shape(module)
    return (out * cols - 1) // (out + cols)


def _unfolded_shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w[0].numel()


def _factor(module: nn.Module, rank: int) -> nn.Sequential:
    w = module.weight.detach()
    out = w.shape[0]
    u, s, vh = torch.linalg.svd(w.reshape(out, -1).double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).to(w.dtype)
    second = (u[:, :rank] * root[None, :]).to(w.dtype)
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        a = nn.Linear(module.in_features, rank, bias=False)
        b = nn.Linear(rank, out, bias=bias)
        a.weight.data.copy_(first)
        b.weight.data.copy_(second)
    else:
        a = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride,
                      module.padding, module.dilation, bias=False,
                      padding_mode=module.padding_mode)
        b = nn.Conv2d(rank, out, 1, bias=bias)
        a.weight.data.copy_(first.reshape(rank, *w.shape[1:]))
        b.weight.data.copy_(second.reshape(out, rank, 1, 1))
    if bias:
        b.bias.data.copy_(module.bias.detach())
    return nn.Sequential(a, b).to(w.device).train(module.training)


def factorize(model: nn.Module, table: LayerTable, rank: dict[str, float]) -> nn.Module:
    """In place: replace each layer named in ``rank`` by its two truncated-SVD factors.

    A fraction that keeps the full rank leaves the layer as it is. Ranks above
    ``worthwhile_rank`` are applied as given even though the factors then cost more MACs
    than the layer (a search learns to avoid them). Returns ``model``.
    """
    from slimtune.compress import PolicyError

    modules = dict(model.named_modules())
    known = {li.name for li in table.layers}
    for name, fraction in sorted(rank.items()):
        m = modules.get(name)
        if name not in known or not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise PolicyError(f"policy sets the rank of unknown layer {name!r}")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise PolicyError(f"layer {name!r} is a grouped/depthwise conv "
                              f"(groups={m.groups}): it cannot be factorised")
        r = factorized_rank(m, fraction)
        if r >= min(_unfolded_shape(m)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, _factor(m, r))
    return model
