"""The AMC-style gymnasium environment: compress one model, one layer per step.

``import slimtune`` registers ``slimtune/Compression-v0``; see
:class:`slimtune.envs.compression.CompressionEnv` for its spec.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "slimtune/Compression-v0"


def register() -> None:
    """Register the env with gymnasium (by entry-point string: nothing heavy imported)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="slimtune.envs.compression:CompressionEnv")


register()

__all__ = ["ENV_ID", "register"]
