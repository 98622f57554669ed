"""The final fine-tune's rounds: more epochs only while the model still gains."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from slimtune.pipeline import finalize
from slimtune.policy import Policy
from slimtune.spec import parse_spec
from tests.jobs import tiny_job, tiny_trial_context


def _ctx(tmp_path, **finalize_section):
    ctx = tiny_trial_context(tmp_path)
    spec = parse_spec(tiny_job(tmp_path, finalize=finalize_section))
    return replace(ctx, spec=finalize.final_recipe(spec, len(ctx.data.train)))


def test_rounds_follow_max_epochs(tmp_path):
    rounds = [finalize.final_rounds(parse_spec(tiny_job(tmp_path, finalize=f)))
              for f in ({}, {"epochs": 1, "max_epochs": 3}, {"epochs": 0.5, "max_epochs": 1.2},
                        {"epochs": 2, "max_epochs": 2})]
    assert rounds == [1, 3, 2, 1]


def test_max_epochs_below_epochs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_epochs .* must be at least epochs"):
        parse_spec(tiny_job(tmp_path, finalize={"epochs": 2, "max_epochs": 1}))


@pytest.mark.parametrize(("scores", "rounds", "kept"), [
    ([0.5, 0.7, 0.705], 3, 3),  # the third round gained < min_gain: stop, keep it (best)
    ([0.5, 0.45], 2, 1),  # the second round lost: its weights are dropped
    ([0.895], 1, 1),  # within min_gain of the teacher after one round: no second
    ([0.5, 0.6, 0.7, 0.8], 4, 4),  # every round gains: up to max_epochs
])
def test_a_round_more_only_while_the_model_gains(tmp_path, monkeypatch, scores, rounds, kept):
    ctx = _ctx(tmp_path, epochs=1, max_epochs=4, min_gain=0.01)
    model, teacher = ctx.baseline_model(), ctx.baseline_model()
    first = next(model.parameters())
    done: list[int] = []

    def fake_finetune(m, t, table, policy, spec, split, *, seed, teacher_outputs=None):
        assert m is model and t is teacher and spec.finetune.steps == ctx.spec.finetune.steps
        done.append(seed)
        with torch.no_grad():
            first.fill_(len(done))  # the weights say which round made them
        return m

    got = iter(scores)
    monkeypatch.setattr(finalize, "finetune", fake_finetune)
    monkeypatch.setattr(finalize, "_val_score",
                        lambda objective, m, split: 0.9 if m is teacher else next(got))
    steps = finalize.fine_tune_final(ctx, model, teacher, Policy(), seed=5)
    assert len(done) == rounds and steps == rounds * ctx.spec.finetune.steps
    assert len(set(done)) == rounds  # each round its own batches
    assert float(first.detach().flatten()[0]) == kept


def test_one_round_without_max_epochs_never_evaluates(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path, epochs=1)
    calls: list[int] = []
    monkeypatch.setattr(finalize, "finetune", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(finalize, "_val_score", lambda *a: pytest.fail("evaluated"))
    model = ctx.baseline_model()
    assert finalize.fine_tune_final(ctx, model, model, Policy(), seed=0) \
        == ctx.spec.finetune.steps and calls == [1]


def test_the_val_score_is_the_split_accuracy(tmp_path):
    ctx = _ctx(tmp_path)
    model = ctx.baseline_model()
    from slimtune.objective import Objective
    from slimtune.train import accuracy, predict

    assert finalize._val_score(Objective.of(ctx.spec), model, ctx.data.val) == pytest.approx(
        accuracy(predict(model, ctx.data.val), ctx.data.val.y))
