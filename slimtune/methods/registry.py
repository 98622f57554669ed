"""The compression methods, in the one order they apply: structure first (channels,
then depth, then factorisation of what is left), then weights (Deep Compression's zeros
and shared values, then rounding to the policy's bits)."""

from __future__ import annotations

from slimtune.methods.base import CompressionMethod
from slimtune.methods.channels import ChannelPruning
from slimtune.methods.deep_compression import DeepCompression
from slimtune.methods.depth import Depth
from slimtune.methods.lowrank import LowRank
from slimtune.methods.quantization import WeightQuantization
from slimtune.policy import BUILTIN_KEYS, EXTRA_KEYS, register_policy_key

METHODS: list[CompressionMethod] = [ChannelPruning(), Depth(), LowRank(), DeepCompression(),
                                    WeightQuantization()]


def methods(stage: str | None = None) -> list[CompressionMethod]:
    """The registered methods in order (only those of ``stage`` if given)."""
    return [m for m in METHODS if stage is None or m.stage == stage]


def register_method(method: CompressionMethod, *, after: str | None = None) -> None:
    """Add a method (after the one named ``after``, else at the end of its stage);
    ValueError if its name or one of its policy keys is taken."""
    for m in METHODS:
        if m.name == method.name or set(m.policy_keys) & set(method.policy_keys):
            raise ValueError(f"compression method {method.name!r} clashes with {m.name!r}")
    for key in method.policy_keys:
        if key not in BUILTIN_KEYS:
            register_policy_key(key)
    if after is not None:
        index = next((i for i, m in enumerate(METHODS) if m.name == after), None)
        if index is None:
            raise ValueError(f"no compression method named {after!r}")
        METHODS.insert(index + 1, method)
        return
    last = max((i for i, m in enumerate(METHODS) if m.stage == method.stage), default=-1)
    if last < 0 and method.stage == "weights":
        last = len(METHODS) - 1
    METHODS.insert(last + 1, method)


def unregister_method(name: str) -> None:
    """Remove the method called ``name`` (tests that add a toy method clean up so)."""
    gone = [m for m in METHODS if m.name == name]
    METHODS[:] = [m for m in METHODS if m.name != name]
    for m in gone:
        EXTRA_KEYS.difference_update(set(m.policy_keys) - set(BUILTIN_KEYS))
