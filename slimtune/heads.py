"""How an attention module names its head count, and lowering it after heads are pruned.

Libraries name the attribute differently: ``num_heads`` (timm, slimtune's zoo ViT),
``num_attention_heads`` (Hugging Face ``transformers``), ``n_heads`` (some research code).
The channels per head may be stored too (``head_dim``, HF's ``attention_head_size``), and
HF's older attention modules keep ``all_head_size`` (heads x head size) to reshape the
context; pruning whole heads must lower each of these that the forward reads.
"""

from __future__ import annotations

from torch import nn

HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_heads")
HEAD_SIZE_NAMES = ("head_dim", "attention_head_size", "head_size")
_TOTAL_NAMES = ("all_head_size", "inner_dim")


def head_count(module: nn.Module) -> int | None:
    """The module's number of heads (its first integer head-count attribute), or None."""
    for name in HEAD_COUNT_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def head_size(module: nn.Module, channels: int) -> int | None:
    """Channels per head of ``module`` when its q/k/v outputs are ``channels`` wide: the
    count must divide them, and a stored head size must agree; None otherwise."""
    heads = head_count(module)
    if heads is None or channels % heads:
        return None
    size = channels // heads
    for name in HEAD_SIZE_NAMES:
        stored = getattr(module, name, None)
        if isinstance(stored, int) and not isinstance(stored, bool) and stored != size:
            return None
    return size


def remove_heads(module: nn.Module, removed: int, size: int) -> None:
    """Lower the module's head count by ``removed`` heads of ``size`` channels, and every
    stored total (``all_head_size``) with it."""
    heads = head_count(module)
    assert heads is not None and removed < heads, (heads, removed)
    for name in HEAD_COUNT_NAMES:
        if getattr(module, name, None) == heads:
            setattr(module, name, heads - removed)
    for name in _TOTAL_NAMES:
        if getattr(module, name, None) == heads * size:
            setattr(module, name, (heads - removed) * size)
