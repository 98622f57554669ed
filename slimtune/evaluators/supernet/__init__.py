"""One-shot weight-sharing supernet evaluator (Once-for-All / BigNAS style).

``elastic``: the fixed channel ranking and the masked supernet; ``sandwich``: its
training by the sandwich rule, checkpointed and cached; ``evaluator``: the
``SupernetEvaluator`` a search asks for scores.
"""

from slimtune.evaluators.supernet.elastic import ChannelOrder, MaskedSupernet, channel_order

__all__ = ["ChannelOrder", "MaskedSupernet", "channel_order"]
