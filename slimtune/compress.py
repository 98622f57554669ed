"""Channel removal and weight rounding for real: the channel-pruning and quantization
methods' own code (the whole policy is applied by :mod:`slimtune.methods.apply`).

Channel removal is structural (torch-pruning shrinks the weight tensors of every layer
coupled to a group), so params, MACs and the saved state_dict really drop. Which
channels go is decided by group L2-magnitude importance on the unpruned weights, so the
choice does not depend on the order groups are pruned in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from itertools import chain

import torch
import torch_pruning as tp
from torch import nn

from slimtune.channel_order import channel_order
from slimtune.errors import PolicyError
from slimtune.heads import remove_heads
from slimtune.layers import (
    ChannelGroup,
    LayerTable,
    count_macs_params,
    dependency_graph,
    eval_mode,
)
from slimtune.layers import example_input as random_example
from slimtune.lowrank import layer_modules
from slimtune.policy import FLOAT_BITS, Policy

__all__ = ["INT8_BITS", "PolicyError", "check_names", "count_macs_params", "fake_quantize",
           "fake_quantized_layers", "group_kept", "grouped_conv_order", "kept_channels",
           "packed_size_bytes", "remove_channels", "removed_channels", "runs_int8"]


def check_names(table: LayerTable, policy: Policy) -> None:
    """PolicyError unless ``policy`` was made for ``table``'s model and its ``prune`` and
    ``bits`` keys name groups and layers of it (what this module's functions read; the
    whole policy is checked by :func:`slimtune.methods.apply.check_policy`)."""
    if policy.model_signature and policy.model_signature != table.signature():
        raise PolicyError(f"policy was made for model {policy.model_signature}, "
                          f"this model is {table.signature()}")
    unknown = sorted(set(policy.prune) - {g.name for g in table.groups})
    if unknown:
        raise PolicyError(f"policy prunes unknown channel groups: {', '.join(unknown)}")
    unknown = sorted(set(policy.bits) - {li.name for li in table.layers})
    if unknown:
        raise PolicyError(f"policy sets bits of unknown layers: {', '.join(unknown)}")


#: a layer at this many bits or fewer runs as int8 on a runtime that has int8; 8-bit layers
#: are not fake-quantized there (the runtime quantizes them, calibrated)
INT8_BITS = 8


def runs_int8(bits: int) -> bool:
    """Whether a layer stored at ``bits`` runs as int8 on a runtime that has int8."""
    return bits <= INT8_BITS


def kept_channels(channels: int, ratio: float, *, min_channels: int = 1, round_to: int = 1) -> int:
    """Channels a group keeps at ``ratio``: rounded to ``round_to``, never below the minimum."""
    return min(max(min_channels, 1, round(channels * (1.0 - ratio) / round_to) * round_to),
               channels)


def _layers(model: nn.Module, table: LayerTable) -> dict[str, nn.Module]:
    """The table's layers in ``model``; PolicyError if the model is not the table's."""
    modules = dict(model.named_modules())
    found = {}
    for info in table.layers:
        m = modules.get(info.name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise PolicyError(f"model has no conv/linear layer {info.name!r}: "
                              "the layer table was built from another model")
        found[info.name] = m
    return found


def _layer_modules(model: nn.Module, table: LayerTable) -> dict[str, dict[str, nn.Module]]:
    """Per table layer, the modules implementing it in a maybe factorised ``model``
    (:func:`slimtune.lowrank.layer_modules`); PolicyError if the model is not the table's."""
    return {info.name: layer_modules(model, info.name) for info in table.layers}


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _prune_fn(module: nn.Module) -> Callable[..., nn.Module]:
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) \
        else tp.prune_linear_out_channels


def _plan(dg: tp.DependencyGraph, layers: dict[str, nn.Module], table: LayerTable,
          policy: Policy, round_to: int,
          keep_order: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """Per group with a ratio > 0, the root-layer channel indices to remove (least L2 first,
    or the tail of the group's ``keep_order`` ranking when it has one)."""
    keep_order = keep_order or {}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    plan = {}
    for group in table.groups:
        ratio = policy.ratio(group.name)
        if ratio <= 0:
            continue
        root = layers[group.name]
        channels = _out_channels(root)
        if channels != group.channels:
            raise PolicyError(f"layer {group.name!r} has {channels} output channels, the "
                              f"table says {group.channels}: is this model already pruned?")
        n_remove = channels - group_kept(group, ratio, round_to)
        if n_remove == 0:
            continue
        if group.name in keep_order:
            plan[group.name] = sorted(_checked_order(group, keep_order[group.name])[-n_remove:])
            continue
        try:
            full = dg.get_pruning_group(root, _prune_fn(root), list(range(channels)))
            scores = importance(full).cpu()
        except (IndexError, RuntimeError, ValueError) as err:
            raise _unsupported(group, err) from err
        plan[group.name] = _least_important(scores, n_remove, group.head_dim)
    return plan


def group_kept(group: ChannelGroup, ratio: float, round_to: int = 1) -> int:
    """Channels ``group`` keeps at ``ratio``; whole heads for an attention group, and a
    multiple of the conv groups for channels a grouped conv splits (each conv group then
    keeps the same positions, what torch-pruning's grouped conv pruning assumes)."""
    unit = math.lcm(max(round_to, 1), group.head_dim, group.conv_groups)
    return kept_channels(group.channels, ratio, min_channels=group.min_channels, round_to=unit)


def _checked_order(group: ChannelGroup, order: Sequence[int]) -> list[int]:
    """``order`` as a list, PolicyError unless it ranks each of the group's channels once."""
    ranked = [int(i) for i in order]
    if sorted(ranked) != list(range(group.channels)):
        raise PolicyError(f"keep order of group {group.name!r} must rank each of its "
                          f"{group.channels} channels once, got {len(ranked)} entries")
    return ranked


def _least_important(scores: torch.Tensor, n_remove: int, head_dim: int) -> list[int]:
    """The ``n_remove`` lowest-scoring channels, or the lowest-scoring whole heads."""
    if head_dim <= 1:
        return sorted(torch.argsort(scores, stable=True)[:n_remove].tolist())
    heads = torch.argsort(scores.reshape(-1, head_dim).sum(dim=1), stable=True)
    return sorted(int(h) * head_dim + i for h in heads[:n_remove // head_dim].tolist()
                  for i in range(head_dim))


def _unsupported(group: ChannelGroup, err: BaseException) -> PolicyError:
    detail = " ".join(str(err).split())[:160]
    return PolicyError(
        f"cannot prune channel group {group.name!r} (layers {', '.join(group.layers)}): "
        f"torch-pruning cannot follow its channels through the ops after it, e.g. a channel "
        f"shuffle or a reshape of the channel dim ({type(err).__name__}: {detail}); "
        "give it ratio 0")


def _example(model: nn.Module, table: LayerTable, given: torch.Tensor | None) -> torch.Tensor:
    return given if given is not None else random_example(model, table.input_shape)


def removed_channels(model: nn.Module, table: LayerTable, policy: Policy, *, round_to: int = 1,
                     example_input: torch.Tensor | None = None,
                     keep_order: Mapping[str, Sequence[int]] | None = None,
                     graph: tp.DependencyGraph | None = None) -> dict[str, list[int]]:
    """Which output channels of each group's root layer ``apply_policy`` removes.

    Indices are the same for every layer of a group (residual adds and depthwise convs
    share channel positions). Groups with nothing removed are left out. ``keep_order``:
    as in :func:`prune_structure`; ``graph``: ``model``'s dependency graph, if built already.
    """
    check_names(table, policy)
    dg = graph
    if dg is None:
        with eval_mode(model):
            dg = dependency_graph(model, _example(model, table, example_input))
    keep_order = keep_order or _grouped_conv_order(model, table, policy)
    return _plan(dg, _layers(model, table), table, policy, round_to, keep_order)


def _grouped_conv_order(model: nn.Module, table: LayerTable,
                        policy: Policy) -> Mapping[str, Sequence[int]] | None:
    return grouped_conv_order(model, table) if policy.prune else None


def grouped_conv_order(model: nn.Module,
                       table: LayerTable) -> Mapping[str, Sequence[int]] | None:
    """For a model with grouped (not depthwise) convs, the symmetric ranking of
    :func:`slimtune.channel_order.channel_order` (None for other models): torch-pruning
    slices a grouped conv's input channels assuming every conv group loses the same
    positions, which plain L2 order does not guarantee (ResNeXt pruned at random weights
    broke). Pass it as ``keep_order`` to prune many policies without ranking again."""
    if not any(li.kind == "conv" and li.groups > 1 for li in table.layers):
        return None
    return channel_order(model, table)


def remove_channels(model: nn.Module, table: LayerTable, policy: Policy, *, round_to: int = 1,
                    example_input: torch.Tensor | None = None,
                    keep_order: Mapping[str, Sequence[int]] | None = None) -> nn.Module:
    """A copy of ``model`` with the policy's ``prune`` channels removed for real (the
    channel-pruning method's restructure; :func:`slimtune.methods.apply.prune_structure`
    also checks the policy and drops blocks)."""
    keep_order = keep_order or _grouped_conv_order(model, table, policy)
    pruned = copy.deepcopy(model)
    layers = _layers(pruned, table)
    with eval_mode(pruned):
        dg = dependency_graph(pruned, _example(pruned, table, example_input))
        plan = _plan(dg, layers, table, policy, round_to, keep_order)
        # All indices were chosen on the unpruned weights. Each group owns its output
        # channels, so pruning one group leaves the others' root indices valid; the graph
        # re-derives concat/split offsets from current shapes in get_pruning_group.
        for name, idxs in plan.items():
            root = layers[name]
            try:
                dg.get_pruning_group(root, _prune_fn(root), idxs).prune()
            except (IndexError, RuntimeError, ValueError) as err:
                raise _unsupported(table.group(name), err) from err
        _set_heads(pruned, table, plan)
        _check_runs(model, pruned, table, plan, _example(model, table, example_input),
                    round_to, keep_order)
    return pruned


def _set_heads(model: nn.Module, table: LayerTable, plan: dict[str, list[int]]) -> None:
    """Lower the head count of every attention module whose head group lost heads."""
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        group = table.group(name)
        if group.attention:
            remove_heads(modules[group.attention], len(idxs) // group.head_dim, group.head_dim)


def _check_runs(original: nn.Module, pruned: nn.Module, table: LayerTable,
                plan: dict[str, list[int]], example: torch.Tensor, round_to: int,
                keep_order: Mapping[str, Sequence[int]] | None = None) -> None:
    """PolicyError naming the group whose pruning left a model that does not run.

    torch-pruning can produce consistent-looking shapes that still fail in forward (a
    reshape into fixed head counts, a channel shuffle); the culprit is found by pruning
    each planned group alone, which only happens on this failure path.
    """
    try:
        with torch.no_grad():
            pruned(example)
        return
    except (IndexError, RuntimeError, ValueError) as err:
        failure = err
    if len(plan) > 1:
        for name in plan:
            ratio = 1.0 - (table.group(name).channels - len(plan[name])) / \
                table.group(name).channels
            alone = Policy(prune={name: min(ratio, 0.999)}, model_signature="")
            remove_channels(original, table, alone, round_to=round_to, example_input=example,
                            keep_order=keep_order)
    raise _unsupported(table.group(next(iter(plan))), failure)


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` rounded to a symmetric per-output-channel grid of ``bits`` bits.

    scale = max|w| / (2**(bits-1) - 1) per output channel (dim 0); all-zero rows stay 0.
    """
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale).reshape(weight.shape)


def quantize_weights(model: nn.Module, table: LayerTable, policy: Policy, *,
                     include_8bit: bool = False) -> nn.Module:
    """Fake-quantize, in place, the weights of every layer the policy puts below 32 bits.

    8-bit layers are skipped unless ``include_8bit``: they run as real int8 in ONNX
    Runtime, calibrated there. A factorised layer's two factors are each quantized at the
    layer's bits. Returns ``model``.
    """
    layers = _layer_modules(model, table)
    with torch.no_grad():
        for name, bits in fake_quantized_layers(policy, include_8bit=include_8bit).items():
            for module in layers[name].values():
                module.weight.copy_(fake_quantize(module.weight, bits))
    return model


def fake_quantized_layers(policy: Policy, *, include_8bit: bool = False) -> dict[str, int]:
    """The layers :func:`quantize_weights` rounds, with their bits: below 32 bits, 8-bit
    ones only if ``include_8bit`` (quantisation-aware fine-tuning trains the same set)."""
    return {name: bits for name, bits in policy.bits.items()
            if bits < FLOAT_BITS and (bits != INT8_BITS or include_8bit)}


def packed_size_bytes(model: nn.Module, table: LayerTable, policy: Policy) -> int:
    """Exact bytes of ``model``'s parameters and buffers stored packed.

    A layer's weight at b < 32 bits takes ceil(numel * b / 8) bytes plus one float32
    scale per output channel (4 * out_channels). Every other tensor (biases, BN
    parameters and running stats, fp32 weights) takes 4 bytes per element. ``model`` may
    be pruned and factorised: sizes are read from its actual tensors, and each factor's
    weight of a factorised layer is packed at the layer's bits.
    """
    check_names(table, policy)
    layers = _layer_modules(model, table)
    packed = {id(module.weight): bits for name, bits in policy.bits.items()
              if bits < FLOAT_BITS for module in layers[name].values()}
    total = 0
    for t in chain(model.parameters(), model.buffers()):
        bits = packed.get(id(t))
        if bits is None:
            total += 4 * t.numel()
        else:
            total += math.ceil(t.numel() * bits / 8) + 4 * t.shape[0]
    return total
