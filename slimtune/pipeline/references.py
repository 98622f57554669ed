"""What a user would do by hand, measured beside the search in the same run.

- ``int8``: the baseline, every layer int8 (ONNX Runtime static QDQ), no pruning;
- ``uniform``: Torch-Pruning-style uniform pruning at the mildest ratio whose model
  meets the budget, fp32 or int8, whichever the screen predicts faster.

Both get the same final fine-tune as the search's winners, so the comparison in the
summary is of recipes applied alike, not of a search against an untrained baseline.

The latency anchors are not references: uniform policies at each precision, timed before
the search so the screen's predictor learns what this machine's int8 and fp32 cost.
"""

from __future__ import annotations

from dataclasses import replace

from slimtune.measurement.screening import Screen
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.spaces.space import SKIP


def int8_reference(space: SearchSpace) -> Policy | None:
    bits = set(space.all_bits())
    return space.uniform(0.0, 8) if 8 in bits else None


def uniform_ladder(space: SearchSpace, screen: Screen) -> list[Policy]:
    """Uniform policies from the mildest predicted-feasible ratio up (each the faster of
    fp32 and int8 as predicted): the first that measures within budget is the reference."""
    ratios = [r for r in space.all_ratios() if r > 0]
    bits = [b for b in space.all_bits() if b in (32, 8)] or [space.all_bits()[0]]
    ladder = []
    for ratio in ratios:
        options = [space.uniform(ratio, b) for b in bits]
        fastest = min(options, key=screen.predicted_ms)
        if screen.admits(fastest) or ladder:
            ladder.append(fastest)
    return ladder


def latency_anchors(space: SearchSpace) -> list[Policy]:
    """Uniform policies at the middle and the largest prune ratio, once per precision the
    space has (fp32, int8), plus (per-layer bit-widths only) the middle ratio with int8
    and fp32 layers alternating: the regions whose cost the layer table mispredicts most
    (int8 on narrow layers, quantize/dequantize at every precision change). With elastic
    depth, the middle ratio once more per precision with every other droppable block
    dropped: the depth classes' margins (``screening.latency_class``). The int8
    reference and the uniform ladder cover ratio 0 and the mild ratios."""
    ratios = [r for r in space.all_ratios() if r > 0]
    bits = [b for b in space.all_bits() if b in (32, 8)]
    if not ratios or not bits:
        return []
    chosen = sorted({ratios[(len(ratios) - 1) // 2], ratios[-1]})
    anchors = {p.key(): p for p in (space.uniform(r, b) for b in bits for r in chosen)}
    if set(bits) == {32, 8} and not space.model_bits:
        int8 = space.uniform(chosen[0], 8)
        layers = sorted(int8.bits)
        mixed = replace(int8, bits={n: (8 if i % 2 == 0 else 32) for i, n in
                                    enumerate(layers)})
        anchors.setdefault(mixed.key(), mixed)
    if space.skip:
        dropped = {SKIP + block: int(i % 2 == 0) for i, block in enumerate(space.skip)}
        for b in bits:
            params = space.params_from_policy(space.uniform(chosen[0], b))
            shallow = space.policy_from_params({**params, **dropped})
            anchors.setdefault(shallow.key(), shallow)
    return list(anchors.values())
