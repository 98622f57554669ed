"""One-shot weight-sharing supernet evaluator (Once-for-All / BigNAS style).

``elastic``: the fixed channel ranking and the masked supernet; ``sandwich``: its
training by the sandwich rule; ``cache``: checkpoint and trained-supernet files, keyed and
checked; ``evaluator``: the ``SupernetEvaluator`` a search asks for scores.
"""

from slimtune.evaluators.supernet.cache import SupernetCacheError, supernet_key
from slimtune.evaluators.supernet.elastic import ChannelOrder, MaskedSupernet, channel_order
from slimtune.evaluators.supernet.evaluator import SupernetEvaluator, supernet_cache_dir
from slimtune.evaluators.supernet.sandwich import (
    SandwichRecipe,
    largest_policy,
    random_policy,
    sandwich_step,
    smallest_policy,
    train_supernet,
)

__all__ = ["ChannelOrder", "MaskedSupernet", "SandwichRecipe", "SupernetCacheError",
           "SupernetEvaluator", "channel_order", "largest_policy", "random_policy",
           "sandwich_step", "smallest_policy", "supernet_cache_dir", "supernet_key",
           "train_supernet"]
