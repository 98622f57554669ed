"""Behaviour metrics (slimtune.evaluate) against hand-computed values on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from slimtune.data import Dataset, Split
from slimtune.evaluate import bound_direction, check_bound, constraint_excess, violations
from slimtune.evaluate.calibration import (
    calibration_metrics,
    expected_calibration_error,
    negative_log_likelihood,
)
from slimtune.evaluate.per_class import agreement_metrics, per_class_metrics
from slimtune.evaluate.privacy import loss_threshold_advantage, privacy_metrics
from slimtune.evaluate.robustness import attack_accuracy, fgsm, pgd
from slimtune.evaluate.saliency import input_gradient_saliency, rank_correlation
from slimtune.evaluate.suite import BehaviourReference, EvalInputs
from slimtune.policy import Policy
from slimtune.result import TrialResult


def onehot_logits(classes: list[int], scale: float = 10.0, n: int = 3) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(torch.tensor(classes), n).float()


def dataset(train_y: list[int], test_y: list[int], n_classes: int = 3) -> Dataset:
    def split(y: list[int]) -> Split:
        return Split(torch.zeros(len(y), 1, 2, 2), torch.tensor(y))

    return Dataset("toy", split(train_y), split(test_y[:1]), split(test_y), n_classes,
                   (1, 2, 2), tuple(str(i) for i in range(n_classes)))


def inputs(logits, data, reference=None, logits_fn=None, model=None) -> EvalInputs:
    return EvalInputs(logits, data, logits_fn or (lambda x: logits), model,
                      BehaviourReference(reference) if reference is not None else None)


# --- calibration -------------------------------------------------------------------------

def test_ece_and_nll_of_a_known_confusion():
    # confidences 0.9 (right), 0.9 (wrong), 0.65 (right), 0.75 (right); 15 bins:
    # bin (13/15, 14/15]: 2 examples, acc 0.5, conf 0.9 -> 2/4 * 0.4  = 0.2
    # bin (9/15, 10/15]:  acc 1, conf 0.65           -> 1/4 * 0.35 = 0.0875
    # bin (11/15, 12/15]: acc 1, conf 0.75           -> 1/4 * 0.25 = 0.0625
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.65, 0.35], [0.25, 0.75]])
    labels = torch.tensor([0, 1, 0, 1])
    logits = probs.log()
    assert expected_calibration_error(logits, labels) == pytest.approx(0.35)
    nll = -(math.log(0.9) + math.log(0.1) + math.log(0.65) + math.log(0.75)) / 4
    assert negative_log_likelihood(logits, labels) == pytest.approx(nll)  # 0.78160
    got = calibration_metrics(inputs(logits, dataset([0], [0, 1, 0, 1], 2)))
    assert got["ece"] == pytest.approx(0.35)
    assert [b["count"] for b in got["reliability_bins"]] == [0] * 9 + [1, 0, 1, 0, 2, 0]


def test_a_perfectly_calibrated_model_has_zero_ece():
    # confidence 0.75 everywhere, right 3 times in 4
    logits = torch.tensor([[0.75, 0.25]] * 4).log()
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1])) == pytest.approx(
        0.0, abs=1e-6)


# --- per class, agreement, exemplars -----------------------------------------------------

def test_per_class_accuracy_and_worst_class_drop():
    labels = [0, 0, 1, 1, 2, 2]
    mine = onehot_logits([0, 1, 1, 1, 2, 0])  # per class: 0.5, 1.0, 0.5
    base = onehot_logits([0, 0, 1, 1, 2, 1])  # per class: 1.0, 1.0, 0.5
    got = per_class_metrics(inputs(mine, dataset([0], labels), reference=base))
    assert got["per_class_accuracy"] == [0.5, 1.0, 0.5]
    assert got["worst_class_accuracy"] == 0.5
    assert got["worst_class_drop_pp"] == pytest.approx(50.0) and got["worst_class"] == 0


def test_an_improvement_everywhere_is_a_negative_drop_and_absent_classes_are_none():
    labels = [0, 0, 1, 1]
    got = per_class_metrics(inputs(onehot_logits([0, 0, 1, 1]), dataset([0], labels),
                                   reference=onehot_logits([0, 1, 1, 0])))
    assert got["per_class_accuracy"] == [1.0, 1.0, None]
    assert got["worst_class_drop_pp"] == pytest.approx(-50.0)


def test_agreement_and_exemplars():
    labels = [0, 0, 1, 1, 2, 2]
    base = onehot_logits(labels)
    mine = onehot_logits([0, 1, 1, 1, 2, 0])
    mine[1] = torch.tensor([0.0, 0.5, 0.0])  # a mild disagreement: smaller TV distance
    got = agreement_metrics(inputs(mine, dataset([0], labels), reference=base))
    assert got["agreement"] == pytest.approx(4 / 6)
    # 5% of 6 examples -> 1 exemplar: example 5 (confidently 0 instead of 2)
    assert got["exemplar_count"] == 1
    assert got["exemplar_accuracy"] == 0.0 and got["exemplar_baseline_accuracy"] == 1.0


# --- privacy -----------------------------------------------------------------------------

def test_loss_threshold_advantage_hand_values():
    assert loss_threshold_advantage([0.1, 0.2], [0.3, 0.4]) == 1.0
    # thresholds 0.1: 1/2-0; 0.2: 1/2-1/2; 0.3: 1-1/2; 0.4: 1-1 -> best 0.5
    assert loss_threshold_advantage([0.1, 0.3], [0.2, 0.4]) == pytest.approx(0.5)
    assert loss_threshold_advantage([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 0.0
    assert loss_threshold_advantage([0.9, 0.8], [0.1, 0.2]) == 0.0  # never negative
    assert loss_threshold_advantage([0.1, 0.2, 5.0], [0.3, 0.4]) == 1.0  # cut to 2 each


def test_a_memorising_model_is_exposed_and_a_fair_one_is_not():
    train_y, test_y = [0, 1, 2, 0], [1, 2, 0, 1]
    data = dataset(train_y, test_y)
    # memoriser: confident and right on its training set, a coin toss on new data
    memo = privacy_metrics(inputs(torch.zeros(4, 3), data,
                                  logits_fn=lambda x: onehot_logits(train_y)))
    assert memo["mia_advantage"] == 1.0
    assert memo["generalization_gap"] == pytest.approx(1.0 - 1 / 4)  # argmax of ties: 0
    # the same behaviour on members and non-members: nothing to infer
    fair = privacy_metrics(inputs(onehot_logits([1, 2, 1, 1]), data,
                                  logits_fn=lambda x: onehot_logits([0, 1, 1, 0])))
    assert fair["mia_advantage"] == 0.0
    assert fair["generalization_gap"] == pytest.approx(0.75 - 0.75)


# --- robustness --------------------------------------------------------------------------

def identity_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    return model.eval()


def test_fgsm_and_pgd_on_a_linear_model():
    # logits = x; x = (0.3, 0): the CE gradient's sign is (-1, +1), so FGSM moves to
    # (0.3 - eps, eps): still class 0 at eps 0.1, class 1 at eps 0.2.
    model = identity_model()
    x, y = torch.tensor([[[[0.3, 0.0]]]]), torch.tensor([0])
    assert torch.allclose(fgsm(model, x, y, 0.1), torch.tensor([[[[0.2, 0.1]]]]))
    assert attack_accuracy(model, x, y, lambda m, a, b: fgsm(m, a, b, 0.1)) == 1.0
    assert attack_accuracy(model, x, y, lambda m, a, b: fgsm(m, a, b, 0.2)) == 0.0
    adv = pgd(model, x, y, eps=0.2, steps=5, step_size=0.1)
    assert torch.allclose(adv, torch.tensor([[[[0.1, 0.2]]]]))  # clipped to the eps ball
    assert attack_accuracy(model, x, y, lambda m, a, b: pgd(m, a, b, 0.1, 5, 0.05)) == 1.0


# --- saliency ----------------------------------------------------------------------------

def test_rank_correlation_hand_values():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 1, 1): 1 - 6 * 2 / (3 * 8) = 0.5
    assert rank_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert rank_correlation([1, 1, 1], [1, 2, 3]) == 0.0


def test_input_gradient_saliency_of_a_linear_model_is_its_weights():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, -3.0], [0.5, 1.0]]))
    maps = input_gradient_saliency(model, torch.randn(2, 1, 1, 2), torch.tensor([0, 1]))
    assert torch.allclose(maps, torch.tensor([[[2.0, 3.0]], [[0.5, 1.0]]]))


# --- bounds and violations ---------------------------------------------------------------

def test_violations_and_directions():
    row = {"ece": 0.06, "agreement": 0.98, "worst_class_drop_pp": 1.0, "accuracy": 0.9}
    bounds = {"ece": 0.05, "agreement": 0.97, "worst_class_drop_pp": 1.0, "fgsm_accuracy": 0.3}
    assert bound_direction("ece") == "max" and bound_direction("agreement") == "min"
    assert violations(row, bounds) == ["ece", "fgsm_accuracy"]  # a missing metric violates
    excess = constraint_excess(row, bounds)
    assert excess["ece"] == pytest.approx(0.01) and excess["agreement"] == pytest.approx(-0.01)
    assert excess["worst_class_drop_pp"] == 0.0 and excess["fgsm_accuracy"] == math.inf
    assert check_bound("ece", 0.05) is None
    assert "out of range" in check_bound("ece", -0.1)
    assert "unknown constraint" in check_bound("eec", 0.1)


def test_trial_result_row_carries_metrics_flat_and_reads_them_back():
    result = TrialResult(trial_id=1, policy=Policy(), state="infeasible", accuracy=0.9,
                         metrics={"ece": 0.07, "per_class_accuracy": [0.5, None]},
                         violations=("ece",))
    row = result.to_dict()
    assert row["ece"] == 0.07 and row["per_class_accuracy"] == [0.5, None]
    assert row["violations"] == ["ece"] and "metrics" not in row
    assert TrialResult.from_dict(row) == result
    assert np.isclose(TrialResult.from_dict(
        {"trial_id": 2, "policy": {}, "state": "ok"}).metrics.get("ece", 0.0), 0.0)
