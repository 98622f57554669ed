"""A baseline at chance level is refused before the search (one line, exit 2, no outputs),
unless ``baseline.allow_chance`` says to search anyway."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtune.baseline import baseline_key
from slimtune.chance import ChanceBaselineError, chance_accuracy, check_above_chance
from slimtune.cli import main
from slimtune.models import build_builtin
from slimtune.spec import parse_spec
from tests.jobs import tiny_job, write_job

LABELS = np.arange(500) % 10


def _logits(predicted: np.ndarray) -> np.ndarray:
    return np.eye(10)[predicted]


def test_one_class_for_everything_is_refused_naming_the_class() -> None:
    with pytest.raises(ChanceBaselineError) as err:
        check_above_chance(_logits(np.full(500, 3)), LABELS, 10, source="trained")
    message = str(err.value)
    assert "\n" not in message
    assert "val accuracy 0.1000 against chance 0.1000" in message
    assert "class 3 for 100%" in message and "baseline.allow_chance: true" in message


def test_a_model_that_learnt_something_passes() -> None:
    rng = np.random.default_rng(0)
    predicted = np.where(rng.random(500) < 0.3, LABELS, rng.integers(0, 10, 500))  # ~37%
    check_above_chance(_logits(predicted), LABELS, 10, source="trained")


def test_just_above_chance_by_noise_is_still_refused() -> None:
    rng = np.random.default_rng(1)
    predicted = np.where(rng.random(500) < 0.03, LABELS, rng.integers(0, 10, 500))  # ~13%
    with pytest.raises(ChanceBaselineError):
        check_above_chance(_logits(predicted), LABELS, 10, source="trained")


def test_chance_is_the_majority_class_on_unbalanced_labels() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    assert chance_accuracy(labels, 2) == 0.9
    with pytest.raises(ChanceBaselineError, match="class 0 for 100%"):  # 0.9 accuracy
        check_above_chance(_logits(np.zeros(100, dtype=int))[:, :2], labels, 2,
                           source="weights")


def test_the_switch_is_no_part_of_the_baseline_cache_key(tmp_path) -> None:
    plain = parse_spec(tiny_job(tmp_path, baseline={"allow_chance": False}))
    allowed = parse_spec(tiny_job(tmp_path, baseline={"allow_chance": True}))
    assert plain.baseline.allow_chance is False and allowed.baseline.allow_chance is True
    assert baseline_key(plain) == baseline_key(allowed)


def test_run_refuses_a_chance_baseline_before_the_search(tmp_path, capsys) -> None:
    model = build_builtin("tiny_resnet", 10, 1)
    with torch.no_grad():  # the classifier says class 3 whatever the image
        model.fc.weight.mul_(1e-6)
        model.fc.bias.copy_(torch.eye(10)[3])
    torch.save(model.state_dict(), tmp_path / "zero.pt")
    job = write_job(tmp_path, model={"arch": "tiny_resnet", "weights": "zero.pt"},
                    baseline={"allow_chance": False})
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "the baseline is at chance level" in err[0]
    assert "check the weights file" in err[0]
    assert not out.exists()


def test_too_few_validation_examples_to_tell_is_a_warning() -> None:
    warning = check_above_chance(_logits(np.full(20, 3)), LABELS[:20], 10, source="trained")
    assert warning is not None and "only 20 validation examples" in warning
    assert check_above_chance(_logits(LABELS), LABELS, 10, source="trained") is None
