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

Everything downstream of the factorisation (fake quantisation, packed size, int8 ONNX
nodes) finds the modules that implement a table layer through :func:`layer_modules`:
the layer itself, or its two factors ``name.0`` and ``name.1`` once factorised.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.layers import LayerInfo, LayerTable

__all__ = ["factorizable", "factorize", "factorized_rank", "layer_modules",
           "worthwhile_fractions", "worthwhile_rank"]


def factorized_rank(module: nn.Module, fraction: float) -> int:
    """Rank kept at ``fraction`` of the layer's full rank, at least 1."""
    return _rank(*_unfolded_shape(module), fraction)


def worthwhile_rank(module: nn.Module) -> int:
    """The largest rank at which the two factors have fewer MACs than the layer."""
    return _worthwhile(*_unfolded_shape(module))


def _rank(out: int, cols: int, fraction: float) -> int:
    return max(1, round(fraction * min(out, cols)))


def _worthwhile(out: int, cols: int) -> int:
    return (out * cols - 1) // (out + cols)


def _unfolded_shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w[0].numel()


def factorizable(layer: LayerInfo) -> bool:
    """Whether a table layer can be factorised: any conv/linear but grouped/depthwise convs."""
    return layer.groups == 1 and layer.kind != "depthwise"


def worthwhile_fractions(layer: LayerInfo, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """The ``fractions`` (all < 1) worth searching for ``layer``: those whose factors have
    fewer MACs than the layer, one per distinct rank (the smallest fraction giving it).

    Judged on the unpruned shape from the table (``out`` by ``in * k * k``). Pruning
    scales both sides of the unfolding by about the same factor, and the full rank and
    the break-even rank ``out * cols / (out + cols)`` with them, so a fraction that saves
    MACs unpruned saves them pruned too (up to rounding). Empty for a layer that cannot
    be factorised or where no fraction saves MACs.
    """
    if not factorizable(layer):
        return ()
    out, cols = layer.out_channels, layer.in_channels * layer.kernel * layer.kernel
    full, limit = min(out, cols), _worthwhile(out, cols)
    kept: dict[int, float] = {}
    for f in sorted(fractions):
        r = _rank(out, cols, f)
        if f < 1.0 and r < full and r <= limit:
            kept.setdefault(r, f)
    return tuple(sorted(kept.values()))


def layer_modules(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """The conv/linear modules that implement table layer ``name`` in ``model``, by module
    name: ``{name: layer}``, or ``{name.0: first, name.1: second}`` when factorised.

    The one place that knows how a factorised layer looks; ``{}`` when the layer's block
    was dropped; PolicyError when ``model`` has no such layer (the table was built from
    another model).
    """
    from slimtune.blocks import is_dropped
    from slimtune.errors import PolicyError

    if is_dropped(model, name):  # its block was dropped: nothing implements it
        return {}
    try:
        m = model.get_submodule(name) if name else None
    except AttributeError:
        m = None
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return {name: m}
    if (isinstance(m, nn.Sequential) and len(m) == 2
            and all(isinstance(f, (nn.Conv2d, nn.Linear)) for f in m)):
        return {f"{name}.0": m[0], f"{name}.1": m[1]}
    raise PolicyError(f"model has no conv/linear layer {name!r}: "
                      "the layer table was built from another model")


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
    from slimtune.errors import PolicyError

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
