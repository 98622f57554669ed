"""What can be searched: per-layer choices over a LayerTable, and their translations."""

from slimtune.spaces.space import SearchSpace

__all__ = ["SearchSpace"]
