"""Behaviour metrics: what compression does to a model beyond its size and speed.

Groups (see ``registry.GROUPS``; the spec's ``evaluate:`` selects them):

=========== ======================================================== ===========
group       row keys                                                 default
=========== ======================================================== ===========
per_class   per_class_accuracy, worst_class, worst_class_accuracy,    on
            worst_class_drop_pp
agreement   agreement, exemplar_accuracy, exemplar_baseline_accuracy, on
            exemplar_count
calibration ece, nll, reliability_bins                                on
privacy     mia_advantage, generalization_gap                         on
robustness  robust_clean_accuracy, fgsm_accuracy, pgd_accuracy,       off
            noise_accuracy
saliency    saliency_rank_corr                                        off
=========== ======================================================== ===========

Constraints (``constraints:`` in the spec, ``violations`` here) bound scalar keys; a
key is *max*-bounded (``ece <= 0.05``) or *min*-bounded (``agreement >= 0.97``), see
``bound_direction``. This module imports no torch; the metric code is in the group
modules and ``slimtune.evaluate.suite``.
"""

from slimtune.evaluate.registry import (
    BOUNDS,
    DEFAULT_GROUPS,
    DEFAULT_OBJECTIVES,
    GROUPS,
    METRIC_KEYS,
    OBJECTIVES,
    Bound,
    MetricGroup,
    bound_direction,
    check_bound,
    constraint_excess,
    flat_metrics,
    group_of,
    violations,
)

__all__ = ["BOUNDS", "DEFAULT_GROUPS", "DEFAULT_OBJECTIVES", "GROUPS", "METRIC_KEYS",
           "OBJECTIVES", "Bound", "MetricGroup", "bound_direction", "check_bound",
           "constraint_excess", "flat_metrics", "group_of", "violations"]
