"""Dropped blocks in a model: replacing residual blocks by ``nn.Identity`` (elastic depth,
:mod:`slimtune.depth` decides which may go) and asking whether a layer went with one."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["drop_blocks", "is_dropped"]


def drop_blocks(model: nn.Module, blocks: Iterable[str]) -> nn.Module:
    """Replace each of ``blocks`` in ``model`` by ``nn.Identity`` (in place)."""
    for name in blocks:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def is_dropped(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` of the original model sits in a block ``model`` dropped."""
    parts = name.split(".")
    module = model
    for part in parts[:-1]:
        module = getattr(module, part, None)
        if module is None:
            return False
        if isinstance(module, nn.Identity):
            return True
    return False
