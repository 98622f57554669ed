"""A whole policy applied: every compression method in registry order.

:func:`check_policy` before any compute, :func:`compressed_structure` (the structure
methods: channels, depth, low rank), :func:`weights_as_deployed` (the weight methods: Deep
Compression, then rounding to the policy's bits), :func:`apply_policy` (both), and a
row's :func:`policy_size_bytes`. The methods' own code sits below this module
(:mod:`slimtune.compress`, :mod:`slimtune.depth`, :mod:`slimtune.lowrank`,
:mod:`slimtune.deep_compression`, :mod:`slimtune.qat`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from slimtune.blocks import drop_blocks
from slimtune.compress import packed_size_bytes, remove_channels
from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.methods.registry import methods
from slimtune.policy import Policy

__all__ = ["apply_policy", "check_policy", "compressed_structure", "policy_size_bytes",
           "prune_structure", "weights_as_deployed"]


def check_policy(table: LayerTable, policy: Policy) -> None:
    """Raise PolicyError unless ``policy`` was made for ``table``'s model and every
    compression method's choices fit it (:meth:`CompressionMethod.check`: known groups,
    layers and blocks; ``rank`` only on factorisable layers without sparsity or clusters)."""
    if policy.model_signature and policy.model_signature != table.signature():
        raise PolicyError(f"policy was made for model {policy.model_signature}, "
                          f"this model is {table.signature()}")
    for method in methods():
        method.check(table, policy)


def prune_structure(model: nn.Module, table: LayerTable, policy: Policy, *, round_to: int = 1,
                    example_input: torch.Tensor | None = None,
                    keep_order: Mapping[str, Sequence[int]] | None = None) -> nn.Module:
    """A copy of ``model`` with the policy's channels removed and its ``skip`` blocks
    dropped (``nn.Identity``); weights not quantized.

    Also rebuilds a pruned architecture, to ``load_state_dict`` saved pruned weights into.
    ``keep_order`` maps a group's name to a ranking of all its root-layer channels, most
    important first: the group then keeps a prefix of that ranking (a weight-sharing
    supernet's fixed order) instead of its largest-L2 channels of ``model``.
    """
    check_policy(table, policy)
    pruned = remove_channels(model, table, policy, round_to=round_to,
                             example_input=example_input, keep_order=keep_order)
    return drop_blocks(pruned, policy.skip)


def compressed_structure(model: nn.Module, table: LayerTable, policy: Policy, *,
                         round_to: int = 1,
                         example_input: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with the policy's architecture: every structure method in
    registry order (channels removed, blocks dropped, then the ``rank`` layers replaced
    by their truncated-SVD factors); weights not quantized.

    The architecture every trial trains, measures and saves; also what rebuilds it to
    ``load_state_dict`` a saved compressed model into (the factors' SVD weights are then
    overwritten). Rank fractions apply to the pruned layers' shapes.
    """
    check_policy(table, policy)
    out = copy.deepcopy(model)  # methods may change the model they are given
    for method in methods("structure"):
        out = method.restructure(out, table, policy, round_to=round_to,
                                 example_input=example_input)
    return out


def apply_policy(model: nn.Module, table: LayerTable, policy: Policy, *, round_to: int = 1,
                 example_input: torch.Tensor | None = None,
                 fake_quant_8bit: bool = False) -> nn.Module:
    """A compressed copy of ``model``; the argument is never changed.

    Channels are removed and the policy's ``rank`` layers replaced by two truncated-SVD
    factors (:mod:`slimtune.lowrank`) as in :func:`compressed_structure`. Then every layer
    below 32 bits gets its weight (both factors' weights if factorised) fake-quantized in
    place, except 8-bit layers unless ``fake_quant_8bit`` (they run as real int8 later in
    ONNX Runtime; set it for a torch-only target), after the policy's per-layer
    ``sparsity`` and ``clusters`` (Deep Compression, :mod:`slimtune.deep_compression`)
    zero and share weights: :func:`weights_as_deployed`, the order a trial uses.
    """
    pruned = compressed_structure(model, table, policy, round_to=round_to,
                                  example_input=example_input)
    return weights_as_deployed(pruned, table, policy, include_8bit=fake_quant_8bit)


def weights_as_deployed(model: nn.Module, table: LayerTable, policy: Policy, *,
                        include_8bit: bool = False) -> nn.Module:
    """In place, the policy's weight stage: every weight method in registry order, the one
    order every path uses (a trial's fine-tune ends with its shared weights;
    ``apply_policy`` and the export follow): Deep Compression's zeros and shared values
    first, then the fake-quantization of layers below 32 bits (8-bit ones only if
    ``include_8bit``). Idempotent on a model whose Deep Compression is already applied.
    Returns ``model``."""
    for method in methods("weights"):
        model = method.transform_weights(model, table, policy, include_8bit=include_8bit)
    return model


def policy_size_bytes(model: nn.Module, table: LayerTable, policy: Policy) -> int:
    """A row's ``size_bytes``: the first compression method's own size figure (Deep
    Compression's container, when the policy uses it), else ``packed_size_bytes``
    (weights packed at their bit-widths)."""
    for method in methods():
        size = method.size_bytes(model, table, policy)
        if size is not None:
            return size
    return packed_size_bytes(model, table, policy)
