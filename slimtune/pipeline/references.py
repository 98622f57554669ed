"""What a user would do by hand, measured beside the search in the same run.

- ``int8``: the baseline, every layer int8 (ONNX Runtime static QDQ), no pruning;
- ``uniform``: Torch-Pruning-style uniform pruning at the mildest ratio whose model
  meets the budget, fp32 or int8, whichever the screen predicts faster.

Both get the same final fine-tune as the search's winners, so the comparison in the
summary is of recipes applied alike, not of a search against an untrained baseline.
"""

from __future__ import annotations

from slimtune.policy import Policy
from slimtune.screening import Screen
from slimtune.spaces import SearchSpace


def int8_reference(space: SearchSpace) -> Policy | None:
    bits = set(space.all_bits())
    return space.uniform(0.0, 8) if 8 in bits else None


def uniform_ladder(space: SearchSpace, screen: Screen) -> list[Policy]:
    """Uniform policies from the mildest predicted-feasible ratio up (each the faster of
    fp32 and int8 as predicted): the first that measures within budget is the reference."""
    ratios = sorted({r for choices in space.ratios.values() for r in choices if r > 0})
    bits = [b for b in space.all_bits() if b in (32, 8)] or [space.all_bits()[0]]
    ladder = []
    for ratio in ratios:
        options = [space.uniform(ratio, b) for b in bits]
        fastest = min(options, key=screen.predicted_ms)
        if screen.admits(fastest) or ladder:
            ladder.append(fastest)
    return ladder
