"""The observation: one layer's features, normalised so one agent fits models of any size.

Every feature is a ratio, a log-scaled count or a flag, so a wider or deeper model of
the same family lands in the same range (AMC's state, plus the budget's slack). The
tuple below is the layout an agent is trained on; an agent trained on another layout
is refused when loaded.
"""

from __future__ import annotations

import math

import numpy as np

from slimtune.layers import LayerInfo, LayerTable

OBS_FEATURES = (
    "depth",  # index / (layers - 1)
    "is_conv", "is_depthwise", "is_linear",
    "log_in_channels", "log_out_channels",  # log2(c) / 12
    "kernel",  # kernel / 7
    "stride",  # stride / 2
    "log_feature_map",  # log2(in_h * in_w) / 12
    "macs_share", "params_share",  # of all conv/linear layers
    "macs_cut_so_far",  # MACs removed by the decisions so far / all MACs
    "macs_to_come",  # MACs of this layer and the ones after it / all MACs
    "decides_group",  # 1 if this step sets a channel group's prune ratio
    "fixed_ratio",  # the ratio already set for this layer's group by an earlier step
    "prev_ratio", "prev_bits",  # the previous step's decision (bits / 32)
    "budget_fraction",  # budget / baseline latency
    "predicted_floor_fraction",  # predicted latency with every later layer at its
                                 # most aggressive setting / baseline latency
)
OBS_LAYOUT = "slimtune-obs-v1:" + ",".join(OBS_FEATURES)
OBS_LOW, OBS_HIGH = -1.0, 2.0
STATIC = OBS_FEATURES.index("macs_cut_so_far")  # features before this one are static


def _log(x: float) -> float:
    return math.log2(max(x, 1.0)) / 12.0


def static_features(table: LayerTable) -> np.ndarray:
    """The per-layer features that do not depend on decisions: shape (layers, STATIC)."""
    total_macs = sum(li.macs for li in table.layers) or 1
    total_params = sum(li.params for li in table.layers) or 1
    rows = [_static_row(li, total_macs, total_params) for li in table.layers]
    return np.asarray(rows, dtype=np.float32)


def _static_row(li: LayerInfo, total_macs: int, total_params: int) -> list[float]:
    return [li.depth, float(li.kind == "conv"), float(li.kind == "depthwise"),
            float(li.kind == "linear"), _log(li.in_channels), _log(li.out_channels),
            li.kernel / 7.0, li.stride / 2.0, _log(li.in_hw[0] * li.in_hw[1]),
            li.macs / total_macs, li.params / total_params]
