"""One fixed channel ranking per group: torch-pruning's group L2 magnitude, in whole
attention heads and in the same positions of every conv group of a grouped conv.

The order channel pruning keeps a prefix of when channels must line up (grouped convs),
and the order a weight-sharing supernet's sub-networks share
(:mod:`slimtune.evaluators.supernet.elastic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from slimtune.errors import PolicyError
from slimtune.layers import ChannelGroup, LayerTable, dependency_graph, eval_mode, example_input

__all__ = ["NORMS", "ChannelOrder", "Site", "channel_order", "conv_groups", "full_group", "sites"]

#: a group's root channels, most important first; every ratio keeps a prefix
ChannelOrder = dict[str, tuple[int, ...]]

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Site:
    """One module a group's channels pass through: which side, at which indices."""

    module: str
    side: str  # "in" | "out"
    index: torch.Tensor  # channel indices in the module's coordinates
    root: torch.Tensor  # the root channel each of them is


def root_fn(module: nn.Module):
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) \
        else tp.prune_linear_out_channels


def full_group(dg: tp.DependencyGraph, root: nn.Module, channels: int):
    return dg.get_pruning_group(root, root_fn(root), list(range(channels)))


def sites(dg: tp.DependencyGraph, full, names: Mapping[nn.Module, str],
           group: ChannelGroup) -> list[Site]:
    """The model modules of a full pruning group, each with its side and indices."""
    sites = []
    for item in full.items:
        module = item.dep.target.module
        if module not in names or not isinstance(module, nn.Module):
            continue  # torch-pruning's own ops (add, cat, reshape) and bare parameters
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        supported = (nn.Conv2d, nn.Linear, *NORMS) if out else (nn.Conv2d, nn.Linear)
        if not isinstance(module, supported):
            raise PolicyError(f"supernet cannot mask channel group {group.name!r}: it passes "
                              f"through {names[module]!r} ({type(module).__name__}), "
                              "which has no channel mask")
        sites.append(Site(names[module], "out" if out else "in",
                           torch.as_tensor(list(item.idxs), dtype=torch.long),
                           torch.as_tensor(list(item.root_idxs), dtype=torch.long)))
    return sites


def conv_groups(sites: list[Site], modules: Mapping[str, nn.Module],
                 group: ChannelGroup) -> int:
    """How many conv groups the group's channels are split into by a grouped conv (1: none).

    Only a grouped conv whose side covers exactly the group's channels, in order, is
    supported: then channel ``c`` is position ``c % (channels / groups)`` of conv group
    ``c // (channels / groups)``.
    """
    found = 1
    for site in sites:
        m = modules[site.module]
        if not isinstance(m, nn.Conv2d) or m.groups == 1 or \
                m.groups == m.in_channels == m.out_channels:
            continue
        width = m.out_channels if site.side == "out" else m.in_channels
        if width != group.channels or not torch.equal(site.index, site.root) or \
                (found > 1 and m.groups != found):
            raise PolicyError(f"supernet cannot order channel group {group.name!r}: it feeds "
                              f"grouped conv {site.module!r} other than one to one")
        found = m.groups
    return found


def channel_order(model: nn.Module, table: LayerTable, *,
                  example: torch.Tensor | None = None) -> ChannelOrder:
    """Each group's channels ranked by torch-pruning's group L2 magnitude on ``model``
    (the importance :mod:`slimtune.compress` prunes by), most important first.

    Attention groups are ranked by head (summed scores), whole heads together; a group
    split by a grouped conv is ranked by position within a conv group (scores summed over
    the conv groups), the same positions of every conv group together.
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    order: ChannelOrder = {}
    with eval_mode(model):
        dg = dependency_graph(model, example if example is not None
                              else example_input(model, table.input_shape))
        for group in table.groups:
            full = full_group(dg, modules[group.name], group.channels)
            scores = importance(full).detach().cpu().double()
            unit = group.head_dim if group.attention else 1
            blocks = conv_groups(sites(dg, full, names, group), modules, group)
            if blocks > 1:  # rank positions inside a conv group, all conv groups together
                width = group.channels // blocks
                ranked = torch.argsort(scores.reshape(blocks, width).sum(0), descending=True,
                                       stable=True).tolist()
                order[group.name] = tuple(b * width + p for p in ranked for b in range(blocks))
            else:
                heads = torch.argsort(scores.reshape(-1, unit).sum(1), descending=True,
                                      stable=True).tolist()
                order[group.name] = tuple(h * unit + i for h in heads for i in range(unit))
    return order


