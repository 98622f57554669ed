"""Deep Compression: per-layer magnitude sparsity and shared weight values (k-means
clusters), held through the fine-tune and stored in the Huffman-coded container
(:mod:`slimtune.deep_compression`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from torch import nn

from slimtune.compressed_file import encode_state
from slimtune.deep_compression import compress_weights, finetune_compressed
from slimtune.layers import LayerTable
from slimtune.methods.base import CompressionMethod
from slimtune.policy import Policy

if TYPE_CHECKING:
    from slimtune.spec import FinetuneSpec


class DeepCompression(CompressionMethod):
    name = "deep_compression"
    policy_keys = ("sparsity", "clusters")
    stage = "weights"

    def during_finetune(self, model: nn.Module, table: LayerTable, policy: Policy,
                        recipe: FinetuneSpec, *, include_8bit: bool) -> AbstractContextManager:
        return finetune_compressed(model, table, policy)

    def transform_weights(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                          include_8bit: bool = False) -> nn.Module:
        if self.active(policy):
            compress_weights(model, table, policy)
        return model

    def size_bytes(self, model: nn.Module, table: LayerTable, policy: Policy) -> int | None:
        if not self.active(policy):
            return None
        return len(encode_state(model, table, policy))
