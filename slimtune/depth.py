"""Elastic depth: residual blocks a policy may drop (Once-for-All's depth dimension).

Channel pruning alone stops paying off on small inputs: with every group at 87.5% the
quickstart ResNet-20 still measures 0.41x of its baseline (ONNX Runtime, batch 64),
because the full-resolution stages cost per block whatever their width. Dropping blocks
removes that cost: the same model with two of layer1's three blocks dropped measures
0.29x.

A block is droppable when it sits in an ``nn.Sequential`` after the container's first
child, holds at least two of the table's layers, and its input and output are one
coupled channel stream (a residual block with an identity shortcut, a MobileNetV2 block
with its skip connection): same shape, under any pruning. Dropping it replaces it by
``nn.Identity``: the container still runs, every other layer keeps its name, and the
first block of each stage always stays.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.blocks import drop_blocks, is_dropped
from slimtune.compress import group_kept, remove_channels
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable, eval_mode, example_input
from slimtune.policy import Policy, under

__all__ = ["drop_blocks", "droppable_blocks", "is_dropped", "under"]


def droppable_blocks(model: nn.Module, table: LayerTable) -> tuple[str, ...]:
    """The blocks of ``model`` a policy may drop (see the module docstring), in order.

    A block qualifies when its output has its input's shape in the model as it is and
    after pruning any one channel group (each group is pruned alone once, as the latency
    predictor's channel map does): so the block's input and output are one coupled
    stream, and dropping it after any pruning still gives a model that runs.
    """
    key = (table.signature(), tuple((n, type(m).__name__) for n, m in model.named_modules()))
    if key not in _FOUND:  # an architecture's answer: preflight and the predictor both ask
        _FOUND[key] = _droppable(model, table)
    return _FOUND[key]


#: droppable blocks per architecture (table signature and module tree), found once a process
_FOUND: dict[tuple, tuple[str, ...]] = {}


def _droppable(model: nn.Module, table: LayerTable) -> tuple[str, ...]:
    layers = [li.name for li in table.layers]
    names = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for index, _child in list(parent.named_children())[1:]:
            name = f"{parent_name}.{index}" if parent_name else index
            if name not in layers and sum(under(n, [name]) for n in layers) >= 2:
                names.append(name)
    keep = set(_shape_preserving(model, table, names))
    for group in table.groups:
        if not keep:
            break
        if group.channels - group_kept(group, 0.5) == 0:
            continue
        try:
            pruned = remove_channels(model, table, Policy(prune={group.name: 0.5}))
        except PolicyError:  # a group preflight's probe leaves out: never pruned
            continue
        keep &= set(_shape_preserving(pruned, table, sorted(keep)))
    return tuple(n for n in names if n in keep)


def _shape_preserving(model: nn.Module, table: LayerTable, names: list[str]) -> list[str]:
    """The modules among ``names`` whose output has their input's shape on an example."""
    same: dict[str, bool] = {}

    def hook(name: str):
        def record(_m: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0] if inputs else None
            same[name] = (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor)
                          and x.shape == output.shape)
        return record

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, table.input_shape))
    finally:
        for h in handles:
            h.remove()
    return [n for n in names if same.get(n, False)]
