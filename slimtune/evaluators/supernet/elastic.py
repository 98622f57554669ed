"""Elastic channels: one fixed channel ranking per group, and the masked supernet.

Every prune ratio of a group keeps a *prefix* of one ranking, made once on the trained
baseline (:func:`channel_order`), so all sub-networks share their weights (slimmable
networks, Once-for-All). :class:`MaskedSupernet` runs the full model with the removed
channels zeroed; :meth:`MaskedSupernet.extract` removes the same channels for real with
:func:`slimtune.compress.prune_structure` and ``keep_order``.

Where a group's channels appear comes from torch-pruning's dependency graph, not from the
architecture: ``DependencyGraph.get_pruning_group(root, fn, all channels)`` lists every
module the group's pruning touches, with the channel indices in that module's own
coordinates (concatenation offsets already applied) and the root channel each came from.
An *out* item (conv, linear, the BatchNorm or LayerNorm that follows, a depthwise conv)
has its output masked after the module; an *in* item (the consumer conv/linear) has its
input masked before it. So a zeroed conv output that BatchNorm shifts is zeroed again
after the BatchNorm, a DenseNet BatchNorm over a concatenation is masked where the
channel sits in it, and anything added to the channels on the way (a bias, a position
embedding) never reaches a consumer. A LayerNorm normalises over the kept channels only,
as the pruned LayerNorm does. Attention head groups are ranked, and so removed, in whole
heads; a group feeding a grouped (non-depthwise) conv is ranked by position inside a
conv group, so every conv group loses the same positions (what torch-pruning's grouped
conv pruning assumes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from slimtune.channel_order import (
    ChannelOrder,
    channel_order,
    conv_groups,
    full_group,
    sites,
)
from slimtune.compress import fake_quantize, fake_quantized_layers, group_kept
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable, dependency_graph, eval_mode, example_input
from slimtune.methods.apply import prune_structure
from slimtune.policy import Policy

__all__ = ["ChannelOrder", "MaskedSupernet", "channel_order"]



def _channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) else -1


def _apply(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = -1
    return x * mask.view(shape)


class _InMask:
    """Forward pre-hook: zero a consumer's removed input channels.

    Hooks are small picklable objects sharing the supernet's mask dict (not closures), so
    a deep copy or a pickled supernet (a Ray task) keeps masks and hooks together."""

    def __init__(self, masks: dict[tuple[str, str], torch.Tensor], name: str, dim: int) -> None:
        self.masks, self.name, self.dim = masks, name, dim

    def __call__(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        mask = self.masks.get((self.name, "in"))
        return None if mask is None else (_apply(inputs[0], mask, self.dim), *inputs[1:])


class _OutMask(_InMask):
    """Forward hook: zero a module's removed output channels."""

    def __call__(self, _module: nn.Module, _inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor):
        mask = self.masks.get((self.name, "out"))
        return None if mask is None else _apply(output, mask, self.dim)


class _LayerNormMask(_InMask):
    """Forward hook: a LayerNorm recomputed over the kept channels only (as pruned)."""

    def __init__(self, masks: dict[tuple[str, str], torch.Tensor], name: str) -> None:
        super().__init__(masks, name, -1)

    def __call__(self, norm: nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor):
        mask = self.masks.get((self.name, "out"))
        if mask is None:
            return None
        keep = mask.nonzero().flatten()
        weight = norm.weight[keep] if norm.weight is not None else None
        bias = norm.bias[keep] if norm.bias is not None else None
        kept = nn.functional.layer_norm(inputs[0].index_select(-1, keep), (len(keep),),
                                        weight, bias, norm.eps)
        return output.new_zeros(output.shape).index_copy(-1, keep, kept)


class MaskedSupernet(nn.Module):
    """The full model, with each group's channels past its kept prefix zeroed.

    ``set(kept)`` (or ``set_policy``) picks the sub-network: ``kept[group]`` channels of
    the group's ranking stay. The masks are forward hooks on ``model``'s modules (see the
    module docstring); the largest sub-network runs with no mask at all. ``extract`` gives
    the same sub-network with its channels really removed.

    Arguments: ``model`` (trained in place by the sandwich rule), its ``table``, the
    ``order`` from :func:`channel_order` on the baseline, and the ``round_to`` a policy's
    ratios are rounded with (``group_kept``).
    """

    def __init__(self, model: nn.Module, table: LayerTable, order: Mapping[str, tuple[int, ...]],
                 *, round_to: int = 1) -> None:
        super().__init__()
        self.model = model
        self.table = table
        self.order = {k: tuple(int(i) for i in v) for k, v in order.items()}
        self.round_to = round_to
        missing = sorted({g.name for g in table.groups} - set(self.order))
        if missing:
            raise PolicyError(f"channel order has no ranking for groups {', '.join(missing)}")
        modules = dict(model.named_modules())
        names = {m: n for n, m in modules.items()}
        with eval_mode(model):
            dg = dependency_graph(model, example_input(model, table.input_shape))
            self._sites = {g.name: sites(dg, full_group(dg, modules[g.name], g.channels),
                                          names, g) for g in table.groups}
            self._blocks = {g.name: conv_groups(self._sites[g.name], modules, g)
                            for g in table.groups}
        # position of each root channel in its group's ranking
        self._rank = {g: torch.argsort(torch.as_tensor(o)) for g, o in self.order.items()}
        # channels of each masked (module, side)
        self._width = {(s.module, s.side): _width(modules[s.module], s.side)
                       for sites in self._sites.values() for s in sites}
        self._masks: dict[tuple[str, str], torch.Tensor] = {}
        self._kept = {g.name: g.channels for g in table.groups}
        self._skip: tuple[str, ...] = ()  # blocks dropped: each outputs its input
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attach()

    # --- choosing the sub-network ----------------------------------------------------

    def kept_of(self, policy: Policy) -> dict[str, int]:
        """Channels each group keeps under ``policy`` (``group_kept`` with ``round_to``)."""
        return {g.name: group_kept(g, policy.ratio(g.name), self.round_to)
                for g in self.table.groups}

    @property
    def kept(self) -> dict[str, int]:
        """The current sub-network: channels kept per group."""
        return dict(self._kept)

    @property
    def skipped(self) -> tuple[str, ...]:
        """The current sub-network's dropped blocks."""
        return self._skip

    def set_policy(self, policy: Policy) -> MaskedSupernet:
        return self.set(self.kept_of(policy), skip=policy.skip)

    def set(self, kept: Mapping[str, int], *, skip: tuple[str, ...] = ()) -> MaskedSupernet:
        """Pick the sub-network keeping ``kept[group]`` channels (missing: all), with the
        ``skip`` blocks dropped (each passes its input through, as ``nn.Identity``)."""
        full = {g.name: g.channels for g in self.table.groups}
        unknown = sorted(set(kept) - set(full))
        if unknown:
            raise PolicyError(f"unknown channel groups: {', '.join(unknown)}")
        new = {**full, **{k: int(v) for k, v in kept.items()}}
        for name, k in new.items():
            if not 1 <= k <= full[name]:
                raise PolicyError(f"group {name!r} keeps {k} of {full[name]} channels")
            if k % self._blocks[name]:
                raise PolicyError(f"group {name!r} feeds a grouped conv of "
                                  f"{self._blocks[name]} groups: keep a multiple of "
                                  f"{self._blocks[name]} channels (round_to), not {k}")
        masks: dict[tuple[str, str], torch.Tensor] = {}
        for name, k in new.items():
            if k == full[name]:
                continue
            removed = self._rank[name] >= k  # per root channel
            for site in self._sites[name]:
                where = (site.module, site.side)
                if where not in masks:
                    masks[where] = torch.ones(self._width[where])
                masks[where][site.index[removed[site.root]]] = 0.0
        device = _device(self.model)
        self._masks.clear()  # in place: the hooks hold this dict
        self._masks.update((k, v.to(device)) for k, v in masks.items())
        self._kept = new
        if tuple(sorted(skip)) != self._skip:
            self._skip = tuple(sorted(skip))
            for h in self._handles:
                h.remove()
            self._handles = []
            self._attach()
        return self

    def largest(self) -> MaskedSupernet:
        return self.set({})

    # --- running -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _attach(self) -> None:
        modules = dict(self.model.named_modules())
        for name, side in sorted(self._width):
            m = modules[name]
            if side == "in":
                hook = m.register_forward_pre_hook(_InMask(self._masks, name, _channel_dim(m)))
            elif isinstance(m, nn.LayerNorm):
                if len(m.normalized_shape) != 1:
                    raise PolicyError(f"supernet masks a LayerNorm over one dim only: {name!r}")
                hook = m.register_forward_hook(_LayerNormMask(self._masks, name))
            else:
                hook = m.register_forward_hook(_OutMask(self._masks, name, _channel_dim(m)))
            self._handles.append(hook)
        for name in self._skip:
            self._handles.append(modules[name].register_forward_hook(_passthrough))

    @contextmanager
    def quantized(self, policy: Policy) -> Iterator[MaskedSupernet]:
        """A block in which each layer ``quantize_weights(..., include_8bit=True)`` rounds
        has its weight fake-quantized as the extracted layer's would be (per output
        channel, the scale taken over the kept input channels only); restored after."""
        modules = dict(self.model.named_modules())
        saved = []
        with torch.no_grad():
            for name, bits in fake_quantized_layers(policy, include_8bit=True).items():
                layer = modules[name]
                weight = layer.weight
                saved.append((weight, weight.detach().clone()))
                weight.copy_(fake_quantize(weight * self._column_mask(name, layer), bits))
        try:
            yield self
        finally:
            with torch.no_grad():
                for weight, original in saved:
                    weight.copy_(original)

    def _column_mask(self, name: str, layer: nn.Module) -> torch.Tensor | float:
        """The layer's kept input channels, shaped to multiply its weight (1: all)."""
        mask = self._masks.get((name, "in"))
        if mask is None:
            return 1.0
        if isinstance(layer, nn.Linear):
            return mask.view(1, -1)
        if layer.groups > 1:  # grouped conv: every conv group keeps the same positions
            mask = mask.view(layer.groups, -1)[0]
        return mask.view(1, -1, 1, 1)

    @contextmanager
    def detached(self) -> Iterator[nn.Module]:
        """``model`` with no mask hooks (the plain full network), hooks back after."""
        for h in self._handles:
            h.remove()
        self._handles = []
        try:
            yield self.model
        finally:
            self._attach()

    def extract(self, policy: Policy | None = None) -> nn.Module:
        """The sub-network of ``policy`` (default: the current one) with its channels
        really removed (:func:`prune_structure` in the fixed order), the supernet's
        weights and BN statistics, in eval mode."""
        if policy is not None:
            self.set_policy(policy)
        # the kept counts as exact ratios: with round_to 1, group_kept gives them back
        sub = Policy(prune={g.name: 1.0 - self._kept[g.name] / g.channels
                            for g in self.table.groups if self._kept[g.name] < g.channels},
                     model_signature=self.table.signature(), skip=self._skip)
        with self.detached() as model:
            return prune_structure(model, self.table, sub, round_to=1,
                                   keep_order=self.order).eval()


def _passthrough(_module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 _output: torch.Tensor) -> torch.Tensor:
    """A dropped block's output: its input, as the extracted ``nn.Identity`` gives."""
    return inputs[0]


def _width(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if side == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if side == "out" else module.in_features
    if isinstance(module, nn.LayerNorm):
        return math.prod(module.normalized_shape)
    return int(module.num_features)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
