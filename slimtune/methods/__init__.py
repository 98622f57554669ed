"""Compression methods: one interface (:class:`CompressionMethod`), one ordered registry.

Built in, in the order they apply: ``channels`` (channel pruning), ``depth`` (dropped
blocks), ``lowrank`` (SVD factorisation), ``deep_compression`` (sparsity and shared
weights), ``quantization`` (per-layer bits). ``register_method`` adds one from outside;
see docs/extending.md.
"""

from slimtune.methods.base import CompressionMethod
from slimtune.methods.registry import METHODS, methods, register_method, unregister_method

__all__ = ["METHODS", "CompressionMethod", "methods", "register_method", "unregister_method"]
