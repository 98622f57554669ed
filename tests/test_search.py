from __future__ import annotations

import pytest

from slimtune.layers import build_layer_table
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search import SEARCHERS, make_searcher
from slimtune.spaces import SearchSpace

RATIOS = (0.0, 0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, (1, 16, 16), round_to=1)
    return SearchSpace.from_table(table, RATIOS, (32, 8, 4), round_to=1)


def fake_result(policy: Policy, trial_id: int, budget: float = 1.0) -> TrialResult:
    """A made-up score: heavier pruning is faster and less accurate."""
    mean_ratio = sum(policy.prune.values()) / max(len(policy.prune), 1)
    latency = 1.5 - mean_ratio
    return TrialResult(trial_id=trial_id, policy=policy, state="ok" if latency <= budget
                       else "infeasible", accuracy=0.9 - 0.2 * mean_ratio,
                       latency_ms=latency, size_bytes=100, budget_ms=budget)


def test_space_round_trip(space):
    assert space.dimensions == len(space.table.groups) + len(space.table.layers)
    dists = space.distributions()
    params = {k: d.choices[-1] for k, d in dists.items()}
    policy = space.policy_from_params(params)
    assert policy.model_signature == space.table.signature()
    assert space.params_from_policy(policy) == params
    assert space.contains(policy)
    assert not space.contains(Policy(prune={space.table.groups[0].name: 0.3}))


def test_uniform_policy_and_most_aggressive(space):
    p = space.uniform(0.5, 8)
    assert set(p.prune.values()) <= {0.5, 0.25, 0.0}
    assert set(p.bits.values()) == {8}
    fastest = space.most_aggressive()
    assert len(fastest) == 3
    assert all(p.ratio(g) == max(rs) for p in fastest for g, rs in space.ratios.items())


def test_ratios_collapse_duplicates_after_rounding():
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, (1, 16, 16), round_to=4)
    space = SearchSpace.from_table(table, (0.0, 0.1, 0.25, 0.5, 0.75), (32,), round_to=4)
    for group in table.groups:  # 8 channels, round_to 4: keep 8 or 4 -> two choices
        if group.channels == 8:
            assert space.ratios[group.name] == (0.0, 0.5)


@pytest.mark.parametrize("name", sorted(set(SEARCHERS) - {"ppo"}))  # ppo: test_agents.py
def test_searchers_ask_tell(space, name):
    searcher = make_searcher(name, space, seed=0, trials=12)
    seen = []
    pending = [searcher.ask() for _ in range(3)]  # concurrent asks before any tell
    for i in range(12):
        policy = pending.pop(0)
        assert space.contains(policy)
        searcher.tell(policy, fake_result(policy, i))
        seen.append(policy)
        pending.append(searcher.ask())
    assert len({p.key() for p in seen}) > 1


def test_searchers_are_seeded(space):
    a = [make_searcher("tpe", space, seed=3, trials=8).ask().key() for _ in range(2)]
    assert a[0] == a[1]


def test_uniform_walks_the_grid(space):
    searcher = make_searcher("uniform", space, seed=0, trials=100)
    policies = [searcher.ask() for _ in range(len(RATIOS) * 3)]
    assert policies[0] == space.uniform(0.0, 32)
    assert policies[-1] == space.uniform(0.75, 4)


def test_optuna_searcher_records_constraint_and_failures(space):
    searcher = make_searcher("nsga2", space, seed=0, trials=8)
    ok, bad, failed = searcher.ask(), searcher.ask(), searcher.ask()
    searcher.tell(ok, TrialResult(trial_id=0, policy=ok, state="ok", accuracy=0.8,
                                  latency_ms=0.5, budget_ms=1.0))
    searcher.tell(bad, TrialResult(trial_id=1, policy=bad, state="infeasible",
                                   latency_ms=2.0, budget_ms=1.0))
    searcher.tell(failed, TrialResult(trial_id=2, policy=failed, state="failed"))
    trials = searcher.study.trials
    assert trials[0].constraints == {"latency_over_budget_ms": -0.5}
    assert trials[1].constraints == {"latency_over_budget_ms": 1.0}
    assert trials[2].state.name == "FAIL"


def test_optuna_searchers_tell_redraws_of_known_policies_without_running_them(space):
    from slimtune.search.optuna_searcher import DUPLICATE, MAX_REDRAWS

    layer = space.table.layers[0].name  # a space of exactly two policies
    two = SearchSpace(table=space.table, ratios={g: (0.0,) for g in space.ratios},
                      bits={layer: (32, 8)})
    searcher = make_searcher("random", two, seed=0, trials=4)
    first = searcher.ask()
    second = searcher.ask()  # asked while the first runs: never the same policy
    assert first.key() != second.key()
    searcher.tell(first, fake_result(first, 0))
    searcher.tell(second, fake_result(second, 1, budget=0.1))  # infeasible
    third = searcher.ask()  # both known: after MAX_REDRAWS skipped redraws, run one anyway
    trials = searcher.study.trials
    while_running = [t for t in trials if t.user_attrs.get(DUPLICATE) == -1]
    assert all(t.state.name == "FAIL" for t in while_running)  # redraws of the first
    skipped = [t for t in trials if t.user_attrs.get(DUPLICATE, -1) >= 0]
    assert len(skipped) == MAX_REDRAWS - 1 and third.key() in {first.key(), second.key()}
    for t in skipped:  # told the values and constraints of the trial they repeat
        original = trials[t.user_attrs[DUPLICATE]]
        assert t.state.name == "COMPLETE" and t.params == original.params
        assert t.values == original.values and t.constraints == original.constraints
    told = [t for t in trials if DUPLICATE not in t.user_attrs]
    assert [t.constraints["latency_over_budget_ms"] for t in told[:2]] == \
        [pytest.approx(0.5), pytest.approx(1.4)]  # 1.5 ms against budgets 1.0 and 0.1
    # a resume re-runs none of them: they were never trials of the job
    searcher.tell(third, fake_result(third, 2))
    searcher.resume([fake_result(first, 0), fake_result(second, 1, budget=0.1),
                     fake_result(third, 2)])
    assert not [t for t in searcher.study.trials if t.state.name == "WAITING"]


def test_one_bit_width_for_the_whole_model(space):
    """``space.bits_per: model``: one ``bits:all`` dimension; a layer left out keeps fp32;
    a mixed-precision policy is outside the space."""
    from dataclasses import replace

    from slimtune.spaces.space import ALL_BITS

    shared = replace(space, model_bits=True)
    assert shared.dimensions == len(space.table.groups) + 1
    dists = shared.distributions()
    assert dists[ALL_BITS].choices == (32, 8, 4)
    assert not any(k.startswith("bits.") and k != ALL_BITS for k in dists)
    layers = [li.name for li in space.table.layers]
    policy = shared.policy_from_params({ALL_BITS: 8})
    assert policy.bits == {n: 8 for n in layers}
    assert shared.params_from_policy(policy)[ALL_BITS] == 8 and shared.contains(policy)
    assert shared.policy_from_params({ALL_BITS: 32}).bits == {}
    mixed = replace(policy, bits={layers[0]: 8})
    assert space.contains(mixed) and not shared.contains(mixed)
    left = shared.without(layers={layers[0]: "test"})
    assert left.policy_from_params({ALL_BITS: 4}).bits == {n: 4 for n in layers[1:]}
    for name in ("tpe", "random", "nsga2"):
        searcher = make_searcher(name, shared, seed=0, trials=6)
        searcher.prepare()
        for _ in range(6):
            asked = searcher.ask()
            assert len(set(asked.bits.values())) <= 1 and shared.contains(asked)
            searcher.tell(asked, fake_result(asked, 0))


def test_bits_per_model_in_the_spec(tmp_path):
    from slimtune.spec import parse_spec
    from tests.jobs import tiny_job

    spec = parse_spec({**tiny_job(tmp_path), "space": {"bits_per": "model"}})
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, (1, 16, 16), round_to=1)
    assert SearchSpace.for_spec(spec.space, table, model).model_bits
    with pytest.raises(Exception, match="bits_per"):
        parse_spec({**tiny_job(tmp_path), "space": {"bits_per": "x"}})


def test_the_model_bits_dimension_is_a_valid_mlflow_param_key(tmp_path):
    """Every trial logs its params to MLflow: ``bits:all`` must be a key MLflow takes."""
    from mlflow.tracking import MlflowClient

    from slimtune.spaces.space import ALL_BITS

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.create_run(client.create_experiment("keys"))
    client.log_param(run.info.run_id, ALL_BITS, 8)
    assert client.get_run(run.info.run_id).data.params[ALL_BITS] == "8"
