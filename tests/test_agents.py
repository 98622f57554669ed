"""PPO agents: training runs, the zip round-trips, bad files are refused, any depth."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from slimtune.agents import AgentError, CompressionAgent, propose_policy, train_agent
from slimtune.agents.agent import CARD, WEIGHTS
from slimtune.envs.compression import CompressionEnv
from slimtune.envs.features import OBS_FEATURES
from slimtune.envs.proxy import ProxyEvaluator
from slimtune.spec import AgentSpec
from tests.envs_helpers import make_problem


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    problem = make_problem(tmp_path_factory.mktemp("agent"))
    return CompressionEnv(problem=problem, scorer=ProxyEvaluator(problem))


@pytest.fixture(scope="module")
def trained(env):
    return train_agent(env, AgentSpec(timesteps=32, n_steps=16, batch_size=8), seed=0)


def test_training_records_every_episode(env, trained):
    layers = len(env.problem.table.layers)
    assert trained.timesteps == 32
    assert len(trained.episodes) == 32 // layers
    for result, reward in trained.episodes:
        assert result.latency_ms > 0 and 0.0 <= result.accuracy <= 1.0
        assert reward == pytest.approx(result.accuracy - (0 if result.feasible else 1.0))
    assert trained.agent.card.trained_on["episodes"] == len(trained.episodes)


def test_save_load_round_trip_gives_the_same_actions(env, trained, tmp_path):
    path = trained.agent.save(tmp_path / "agent.zip")
    loaded = CompressionAgent.load(path)
    obs = np.random.default_rng(0).uniform(0, 1, (20, len(OBS_FEATURES))).astype(np.float32)
    np.testing.assert_array_equal(trained.agent.act(obs), loaded.act(obs))
    assert propose_policy(trained.agent, env) == propose_policy(loaded, env)


def test_agent_runs_on_a_model_of_another_depth(trained, tmp_path):
    deeper = make_problem(tmp_path, model={"arch": "resnet20"},
                          data={"dataset": "synthetic", "train_size": 256, "val_size": 64,
                                "test_size": 64}, baseline={"epochs": 1, "batch_size": 64})
    env = CompressionEnv(problem=deeper)
    assert len(deeper.table.layers) > trained.agent.card.trained_on["layers"]
    policy = propose_policy(trained.agent, env)
    assert policy.model_signature == deeper.table.signature()
    assert set(policy.prune) <= {g.name for g in deeper.table.groups}
    assert deeper.predictor.predict_ms(policy) <= deeper.budget_ms


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_bad_agent_files_are_refused_with_one_line(trained, tmp_path):
    good = trained.agent.save(tmp_path / "good.zip")
    with zipfile.ZipFile(good) as zf:
        card, weights = json.loads(zf.read(CARD)), zf.read(WEIGHTS)
    other_layout = dict(card, obs_layout="slimtune-obs-v0:depth")
    (tmp_path / "text.zip").write_text("not a zip")
    cases = {
        "missing": tmp_path / "nope.zip",
        "not a zip": tmp_path / "text.zip",
        "sb3 zip": _zip(tmp_path / "sb3.zip", {"data": "{}", "policy.pth": weights}),
        "layout": _zip(tmp_path / "layout.zip", {CARD: json.dumps(other_layout),
                                                 WEIGHTS: weights}),
        "pickle": _zip(tmp_path / "pickle.zip", {CARD: json.dumps(card),
                                                 WEIGHTS: _evil_pickle()}),
    }
    for what, path in cases.items():
        with pytest.raises(AgentError) as err:
            CompressionAgent.load(path)
        assert "\n" not in str(err.value), what
    assert not (tmp_path / "pwned").exists()


def _evil_pickle() -> bytes:
    import io
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    buf = io.BytesIO()
    pickle.dump(Evil(), buf)
    return buf.getvalue()


def test_ppo_searcher_proposes_distinct_policies_agent_first(env):
    from slimtune.result import TrialResult
    from slimtune.search import make_searcher
    from slimtune.spec import parse_spec

    problem = env.problem
    spec = problem.spec.model_copy(update={"agent": AgentSpec(timesteps=16, n_steps=8,
                                                               batch_size=8)})
    problem = type(problem)(**{**problem.__dict__, "spec": parse_spec(spec.model_dump())})
    searcher = make_searcher("ppo", problem.space, seed=0, trials=4,
                             problem_factory=lambda: problem)
    anchor = problem.space.uniform(0.5, 32)
    searcher.enqueue(anchor)
    searcher.prepare()
    assert searcher.agent is not None and len(searcher.trained.episodes) == 16 // len(
        problem.table.layers)
    asked = [searcher.ask() for _ in range(4)]
    assert asked[0] == anchor  # a warm start goes first
    assert asked[1] == propose_policy(searcher.agent, searcher._env)  # its deterministic policy
    assert len({p.key() for p in asked}) == 4
    for p in asked:
        searcher.tell(p, TrialResult(trial_id=0, policy=p, state="ok", accuracy=0.5))
