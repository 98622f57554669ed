"""LayerTable: what the search sees of a model.

One row per conv/linear layer (shape, cost, depth) and one entry per prunable channel
group: the channels torch-pruning's dependency graph says must be removed together
(a residual stage, an expansion conv with its depthwise conv). Names are the model's
module names, so a table, and a Policy keyed by it, stays readable and comparable.

Cost accounting: ``LayerInfo.macs`` counts the multiply-accumulates of the layer's
weight only (conv: out_h*out_w*out_c*in_c/groups*k_h*k_w; linear: in*out per position).
``LayerTable.macs``/``params`` are ``tp.utils.count_ops_and_params`` totals (which also
count BN, activations, pooling and bias adds), the same count :func:`count_macs_params`
gives for a pruned model, so the two are directly comparable. The sum of the layers'
MACs is therefore a little below ``LayerTable.macs``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from slimtune.heads import head_size
from slimtune.tracing import TracedGraph

LAYER_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """One conv or linear layer of the original model."""

    name: str
    kind: str  # "conv" | "depthwise" | "linear"
    index: int  # position in execution order
    depth: float  # index / (n_layers - 1)
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]  # input feature-map size, (1, 1) for linear
    macs: int
    params: int
    group: str | None  # channel group owning the output channels; None: not prunable


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, named after their first layer."""

    name: str
    channels: int
    layers: tuple[str, ...]  # layers whose output channels are these channels
    min_channels: int
    # attention heads: the module naming its heads (slimtune.heads) whose q/k/v outputs
    # these channels are; pruned in whole heads of ``head_dim`` channels. "" / 1: plain
    attention: str = ""
    head_dim: int = 1
    # grouped (not depthwise) convs these channels feed or leave: they are pruned in whole
    # positions of every conv group, so kept channels are a multiple of this (lcm of their
    # ``groups``; 1: no grouped conv)
    conv_groups: int = 1


@dataclass(frozen=True)
class LayerTable:
    """The layers and channel groups of one model at one input shape."""

    layers: tuple[LayerInfo, ...]
    groups: tuple[ChannelGroup, ...]
    input_shape: tuple[int, ...]  # (C, H, W) of one example
    macs: int
    params: int

    def signature(self) -> str:
        """A short hash of the structure, so a policy can name the model it was made for."""
        features = {
            "input_shape": list(self.input_shape),
            "layers": [[li.name, li.kind, li.in_channels, li.out_channels, li.kernel,
                        li.stride, li.groups, list(li.in_hw)] for li in self.layers],
            "groups": [[g.name, g.channels, list(g.layers)]
                       + ([g.attention, g.head_dim] if g.attention else []) for g in self.groups],
        }
        return hashlib.sha1(json.dumps(features).encode()).hexdigest()[:12]

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer named {name!r}")

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no channel group named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerTable:
        layers = tuple(LayerInfo(**{**d, "in_hw": tuple(d["in_hw"])}) for d in data["layers"])
        groups = tuple(ChannelGroup(**{**d, "layers": tuple(d["layers"])})
                       for d in data["groups"])
        return cls(layers=layers, groups=groups, input_shape=tuple(data["input_shape"]),
                   macs=int(data["macs"]), params=int(data["params"]))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block in eval mode, then restore every module's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A random batch of one, on the model's device."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(1, *input_shape, device=device)


def dependency_graph(model: nn.Module, example: torch.Tensor) -> TracedGraph:
    """torch-pruning's dependency graph (tracing needs autograd, so grad is forced on);
    a reshape it cannot map is recorded, not raised (:class:`slimtune.tracing.TracedGraph`)."""
    with torch.enable_grad():
        return TracedGraph().build_dependency(model, example_inputs=example, verbose=False)


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and parameter count of one example, by ``tp.utils.count_ops_and_params``."""
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_input(model, input_shape))
    return int(macs), int(params)


@dataclass
class _Record:
    """What the forward hooks saw of one layer."""

    index: int
    in_hw: tuple[int, int]
    macs: int = 0
    output: torch.Tensor | None = None


def _trace_layers(model: nn.Module, example: torch.Tensor) -> tuple[dict[nn.Module, _Record],
                                                                    set[nn.Module]]:
    """Execution order, input size and MACs of every conv/linear layer, and the layers
    whose output is a model output (changing their channels would change the output)."""
    records: dict[nn.Module, _Record] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module not in records:
            hw = tuple(inputs[0].shape[-2:]) if isinstance(module, nn.Conv2d) else (1, 1)
            records[module] = _Record(index=len(records), in_hw=(int(hw[0]), int(hw[1])))
        rec = records[module]
        out_channels = output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1]
        rec.macs += module.weight.numel() * (output[0].numel() // out_channels)
        rec.output = output

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            outputs = tp.utils.flatten_as_list(model(example))
    finally:
        for h in handles:
            h.remove()
    output_layers = {m for m, rec in records.items() if any(rec.output is o for o in outputs)}
    for rec in records.values():
        rec.output = None
    return records, output_layers


def _layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups == module.in_channels == module.out_channels > 1:
        return "depthwise"
    return "conv"


@dataclass(frozen=True)
class UntracedGroup:
    """Channels torch-pruning couples but cannot follow: they stay unpruned."""

    layers: tuple[str, ...]  # the conv/linear layers whose output channels they are
    reason: str

    def describe(self) -> str:
        return f"{', '.join(self.layers)}: {self.reason}"


@dataclass
class _Traced:
    """The coupled channel groups of a graph: prunable ones, and those left out."""

    groups: list[tuple[list[nn.Module], int]]  # layers in execution order, conv groups
    untraced: list[tuple[list[nn.Module], str]]


def _channel_groups(dg: TracedGraph, records: Mapping[nn.Module, _Record],
                    output_layers: set[nn.Module]) -> _Traced:
    """The prunable groups, each as its conv/linear layers in execution order.

    A group is left out when it reaches the model output, directly (the classifier) or
    through shape-keeping ops (a conv followed by global pooling as the last op), and,
    listed in ``untraced``, when torch-pruning cannot map its channel indices through the
    ops after it (a ShuffleNet channel shuffle after a split and concat): its layers keep
    their channels.
    """
    traced = _Traced([], [])
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for group in dg.get_all_groups(ignored_layers=list(output_layers),
                                   root_module_types=list(LAYER_TYPES)):
        if any(isinstance(dep.target.module, tp.ops._OutputOp) for dep, _ in group):
            continue
        members = sorted({dep.target.module for dep, _ in group
                          if dg.is_out_channel_pruning_fn(dep.handler)
                          and dep.target.module in records}, key=lambda m: records[m].index)
        if not members:
            continue
        if dg.touches_unmapped(group):
            err = next(iter(dg.unmapped.values()))
            traced.untraced.append((members, "its channels pass through a reshape torch-pruning "
                                    f"cannot map ({type(err).__name__} in its index mapping)"))
            continue
        try:
            importance(group)
        except IndexError as err:
            traced.untraced.append((members, "torch-pruning cannot map its channel indices "
                                    f"through the ops after it (IndexError: {err})"))
            continue
        traced.groups.append((members, _conv_groups(group)))
    traced.groups.sort(key=lambda g: records[g[0][0]].index)
    return traced


def _conv_groups(group: tp.Group) -> int:
    """The lcm of the ``groups`` of the grouped (not depthwise) convs a group touches."""
    found = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and \
                not m.groups == m.in_channels == m.out_channels:
            found = math.lcm(found, m.groups)
    return found


def untraced_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[UntracedGroup]:
    """The channel groups :func:`build_layer_table` leaves out because torch-pruning cannot
    follow them (their layers still get bit-widths), each with why."""
    example = example_input(model, tuple(int(s) for s in input_shape))
    names = {m: n for n, m in model.named_modules()}
    with eval_mode(model):
        records, output_layers = _trace_layers(model, example)
        traced = _channel_groups(dependency_graph(model, example), records, output_layers)
    return [UntracedGroup(tuple(names[m] for m in members), reason)
            for members, reason in traced.untraced]


def _attention_of(model: nn.Module, members: list[str], channels: int) -> tuple[str, int]:
    """The attention module whose heads a group's channels are, and the channels per head.

    A group is one of heads when all its layers are Linear children of one module with an
    integer head count (``num_heads``, or Hugging Face's ``num_attention_heads``; see
    :mod:`slimtune.heads`) that divides the group's channels (q/k/v projections); pruning
    it then removes whole heads. ("", 1) otherwise.
    """
    modules = dict(model.named_modules())
    parents = {name.rpartition(".")[0] for name in members}
    if len(parents) != 1 or not all(isinstance(modules[n], nn.Linear) for n in members):
        return "", 1
    parent = parents.pop()
    size = head_size(modules[parent], channels)
    if size is None:
        return "", 1
    return parent, size


def build_layer_table(model: nn.Module, input_shape: tuple[int, ...], *,
                      round_to: int = 1) -> LayerTable:
    """Trace ``model`` on one random example and tabulate its layers and channel groups.

    The model is run in eval mode and its training flags are restored afterwards.
    ``round_to`` sets each group's ``min_channels`` (never pruned below one multiple).
    """
    input_shape = tuple(int(s) for s in input_shape)
    example = example_input(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    with eval_mode(model):
        records, output_layers = _trace_layers(model, example)
        traced = _channel_groups(dependency_graph(model, example), records, output_layers)
    macs, params = count_macs_params(model, input_shape)

    groups = []
    owner: dict[nn.Module, str] = {}
    for members, conv_groups in traced.groups:
        root = members[0]
        channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        attention, head_dim = _attention_of(model, [names[m] for m in members], channels)
        least = max(round_to, head_dim)
        if conv_groups > 1:
            least = math.lcm(least, conv_groups)
        groups.append(ChannelGroup(name=names[root], channels=channels,
                                   layers=tuple(names[m] for m in members),
                                   min_channels=min(least, channels),
                                   attention=attention, head_dim=head_dim,
                                   conv_groups=conv_groups))
        owner.update((m, names[root]) for m in members)

    ordered = sorted(records, key=lambda m: records[m].index)
    last = max(len(ordered) - 1, 1)
    layers = []
    for m in ordered:
        rec = records[m]
        conv = isinstance(m, nn.Conv2d)
        layers.append(LayerInfo(
            name=names[m], kind=_layer_kind(m), index=rec.index, depth=rec.index / last,
            in_channels=m.in_channels if conv else m.in_features,
            out_channels=m.out_channels if conv else m.out_features,
            kernel=m.kernel_size[0] if conv else 1, stride=m.stride[0] if conv else 1,
            groups=m.groups if conv else 1, in_hw=rec.in_hw, macs=rec.macs,
            params=sum(p.numel() for p in m.parameters(recurse=False)),
            group=owner.get(m)))
    return LayerTable(layers=tuple(layers), groups=tuple(groups), input_shape=input_shape,
                      macs=macs, params=params)
