"""Supernet files: the training checkpoint and the finished supernet, keyed and checked.

Both are ``torch.save`` payloads of plain tensors, numbers and strings (loaded with
``weights_only=True``), written atomically (``write_bytes_atomic``), so a SIGKILL leaves
the last complete file. The key hashes everything that determines the trained weights:
the baseline's state, the training split, the table's signature, the space's choices,
the channel order and the training recipe. A file whose key, model signature or tensors
do not match the model at hand is refused with a one-line :class:`SupernetCacheError`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.data import Split
from slimtune.errors import UserInputError
from slimtune.layers import LayerTable
from slimtune.policy import write_bytes_atomic
from slimtune.spaces import SearchSpace

__all__ = ["FORMAT", "SupernetCacheError", "read_payload", "split_hash", "state_hash",
           "supernet_key", "write_payload"]

FORMAT = 1  # bump when the payload or what training produces changes


class SupernetCacheError(UserInputError):
    """A supernet file that belongs to another model, table or recipe, or is unreadable."""


def state_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def split_hash(split: Split) -> str:
    """SHA-256 of a split's inputs and labels (what the supernet trains on)."""
    return split.content_hash()  # streamed: the digest of the whole tensors, as before


def supernet_key(baseline: nn.Module, table: LayerTable, space: SearchSpace,
                 order: Mapping[str, tuple[int, ...]], recipe: Mapping[str, Any],
                 train: Split) -> str:
    """The cache key of a trained supernet (16 hex digits)."""
    features = {"format": FORMAT, "baseline": state_hash(baseline), "train": split_hash(train),
                "table": table.signature(),
                "ratios": {g: list(r) for g, r in sorted(space.ratios.items())},
                "bits": {n: list(b) for n, b in sorted(space.bits.items())},
                "order": {g: list(o) for g, o in sorted(order.items())},
                "recipe": dict(sorted(recipe.items()))}
    if space.skip:  # elastic depth trains other sub-networks; without it keys are as before
        features["skip"] = list(space.skip)
    return hashlib.sha256(json.dumps(features, sort_keys=True).encode()).hexdigest()[:16]


def write_payload(path: Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` to bytes, then an atomic write."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_payload(path: Path, *, kind: str, key: str, table: LayerTable,
                 model: nn.Module) -> dict[str, Any]:
    """A payload of ``kind`` made for this key, table and model; SupernetCacheError else."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
        raise SupernetCacheError(f"supernet {kind} {path} is unreadable "
                                 f"({type(err).__name__}): delete it") from err
    if not isinstance(payload, dict) or payload.get("kind") != kind or \
            payload.get("format") != FORMAT:
        raise SupernetCacheError(f"{path} is not a supernet {kind} of format {FORMAT}: delete it")
    signature = table.signature()
    if payload.get("signature") != signature or payload.get("key") != key:
        raise SupernetCacheError(
            f"supernet {kind} {path} was made for model {payload.get('signature')} "
            f"(key {payload.get('key')}), not for this model {signature} (key {key}): "
            "delete it or use another cache folder")
    state, expected = payload.get("model", {}), model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise SupernetCacheError(f"supernet {kind} {path} holds weights of another "
                                 "architecture than this model: delete it")
    return payload
