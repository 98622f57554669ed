"""The fine-tune recipe: searchable distillation, carried by the policy into the trial."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import slimtune.finetune as finetune_module
from slimtune.compress import fake_quantize
from slimtune.errors import SpecError
from slimtune.finetune import finetune_recipe
from slimtune.layers import build_layer_table
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search import make_searcher
from slimtune.spaces import SearchSpace
from slimtune.spec import parse_spec
from slimtune.trial import TrialContext, run_trial
from tests.jobs import tiny_job, tiny_trial_context

RECIPE = {"distill": (True, False), "temperature": (2.0, 4.0), "alpha": (0.5, 0.9)}


@pytest.fixture(scope="module")
def table():
    return build_layer_table(build_builtin("tiny_resnet", 10, 1), (1, 16, 16), round_to=1)


def test_policy_recipe_round_trips_and_old_policies_key_as_before(tmp_path):
    old_json = '{"prune": {"a": 0.5}, "bits": {"b": 4}, "model_signature": "abc"}'
    old = Policy.from_json(old_json)
    assert old.recipe == {} and "recipe" not in old.to_dict()
    assert old.key() == json.dumps({"prune": {"a": 0.5}, "bits": {"b": 4}}, sort_keys=True)
    new = replace(old, recipe={"temperature": 2, "distill": False, "alpha": 0.5})
    assert new.recipe == {"alpha": 0.5, "distill": False, "temperature": 2.0}
    assert new.key() != old.key() and '"recipe"' in new.key()
    new.save(tmp_path / "policy.json")
    assert Policy.load(tmp_path / "policy.json") == new
    for bad in ({"distill": "false"}, {"distill": 2}, {"temperature": 0}, {"alpha": 1.5},
                {"alpha": True}, {"lr": 0.1}):
        with pytest.raises(ValueError):
            Policy(recipe=bad)


def test_space_recipe_dimensions_round_trip(table):
    plain = SearchSpace.from_table(table, (0.0, 0.5), (32, 8))
    space = SearchSpace.from_table(table, (0.0, 0.5), (32, 8), recipe=RECIPE)
    assert space.dimensions == plain.dimensions + 3
    dists = space.distributions()
    assert dists["recipe.distill"].choices == (True, False)
    params = {k: d.choices[-1] for k, d in dists.items()}
    policy = space.policy_from_params(params)
    assert policy.recipe == {"alpha": 0.9, "distill": False, "temperature": 4.0}
    assert space.params_from_policy(policy) == params and space.contains(policy)
    anchor = space.uniform(0.5, 8)  # unset recipe: the spec's finetune values
    assert anchor.recipe == {} and "recipe.alpha" not in space.params_from_policy(anchor)
    assert space.contains(anchor)
    assert not space.contains(replace(policy, recipe={"alpha": 0.7}))
    # a searcher samples the recipe with the rest and is told results as usual
    searcher = make_searcher("tpe", space, seed=0, trials=4)
    searcher.enqueue(anchor)  # a warm start without a recipe gets one sampled
    for i in range(3):
        asked = searcher.ask()
        assert set(asked.recipe) == set(RECIPE)
        searcher.tell(asked, TrialResult(trial_id=i, policy=asked, state="ok", accuracy=0.5,
                                         latency_ms=1.0, size_bytes=1, budget_ms=2.0))


def test_spec_recipe_keys(tmp_path):
    spec = parse_spec(tiny_job(tmp_path, space={"distill": [False, True, True],
                                                "alpha": [0.9, 0.5]}))
    assert spec.space.recipe == {"distill": (True, False), "alpha": (0.5, 0.9)}
    assert parse_spec(tiny_job(tmp_path)).space.recipe == {}
    for searcher in ("ppo", "uniform"):
        with pytest.raises(SpecError, match=f"space.temperature: .* not by {searcher}"):
            parse_spec(tiny_job(tmp_path, search={"searcher": searcher},
                                space={"temperature": [2.0]}))
    for bad in ({"temperature": [0]}, {"alpha": [1.2]}, {"distill": ["maybe"]}):
        with pytest.raises(SpecError, match="space."):
            parse_spec(tiny_job(tmp_path, space=bad))
    ft = finetune_recipe(spec.finetune, Policy(recipe={"distill": False, "alpha": 0.5}))
    assert (ft.distill, ft.alpha, ft.temperature) == (False, 0.5, spec.finetune.temperature)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TrialContext:
    return tiny_trial_context(tmp_path_factory.mktemp("recipe"))


def test_trial_uses_the_policys_recipe_over_the_spec(ctx, monkeypatch):
    calls = []
    real = finetune_module.train

    def spy(model, split, **kwargs):
        calls.append(kwargs)
        return real(model, split, **kwargs)

    monkeypatch.setattr(finetune_module, "train", spy)
    spec = ctx.spec.with_sections(finetune={"hint_weight": 1.0})  # hints need the teacher
    no_teacher = Policy(recipe={"distill": False})
    result = run_trial(replace(ctx, spec=spec), 0, no_teacher, "test")
    assert result.state == "ok", result.error
    assert calls[-1]["teacher"] is None and calls[-1]["hints"] is None
    hot = Policy(recipe={"temperature": 2.0, "alpha": 0.25})
    assert run_trial(replace(ctx, spec=spec), 1, hot, "test").state == "ok"
    assert calls[-1]["teacher"] is not None and calls[-1]["hints"] is not None
    assert (calls[-1]["temperature"], calls[-1]["alpha"]) == (2.0, 0.25)
    assert Policy.load(ctx.trials_dir / "1" / "policy.json") == hot


def test_trial_with_qat_and_hints_saves_a_clean_model(ctx):
    spec = ctx.spec.with_sections(finetune={"qat": True, "hint_weight": 1.0,
                                            "hint_layers": ["layer1.conv2", "fc"]})
    layer = ctx.table.layers[1].name
    result = run_trial(replace(ctx, spec=spec), 2, Policy(bits={layer: 4}), "test")
    assert result.state == "ok", result.error
    saved = torch.load(ctx.trials_dir / "2" / "model.pt", weights_only=True)["state_dict"]
    assert set(saved) == set(ctx.baseline_state)  # no regressor, no parametrization
    weight = saved[f"{layer}.weight"]
    assert torch.equal(weight, fake_quantize(weight, 4))
