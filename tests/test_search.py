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
