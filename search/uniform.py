"""Uniform: the same prune ratio in every group and the same bits in every layer."""

from __future__ import annotations

import numpy as np

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace


class UniformSearcher(Searcher):
    """Walks the grid of (ratio, bits) pairs, the reference every search must beat.

    With rank dimensions in the space (``space.rank``) the grid is of (ratio, bits, rank
    fraction) triples, the fraction applied to every layer that has rank choices. With
    fewer trials than grid points it takes evenly spaced points of the grid, from the
    lightest compression to the heaviest.
    """

    name = "uniform"

    def __init__(self, space: SearchSpace, *, seed: int = 0, trials: int = 16) -> None:
        super().__init__(space, seed=seed, trials=trials)
        ratios = list(space.all_ratios())
        bits = list(space.all_bits())
        ranks = sorted({f for fs in space.rank.values() for f in fs} | {1.0}, reverse=True)
        grid = [(r, b, k) for r in ratios for b in bits for k in ranks]
        if trials < len(grid):
            picks = np.linspace(0, len(grid) - 1, trials).round().astype(int)
            grid = [grid[i] for i in picks]
        self._grid = grid
        self._next = 0

    def ask(self) -> Policy:
        ratio, bits, rank = self._grid[self._next % len(self._grid)]
        self._next += 1
        return self.space.uniform(ratio, bits, rank)

    def tell(self, policy: Policy, result: TrialResult) -> None:
        """The grid does not adapt to results."""
