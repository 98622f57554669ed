"""The AMC env: gymnasium's checks, the budget wall, scoring, seeding, vector envs."""

from __future__ import annotations

from dataclasses import replace

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import slimtune  # noqa: F401 - registers the env
from slimtune.envs import ENV_ID
from slimtune.envs.compression import CompressionEnv
from slimtune.envs.episode import Choice, PolicyBuilder
from slimtune.envs.features import OBS_FEATURES
from slimtune.envs.proxy import ProxyEvaluator
from tests.envs_helpers import make_problem


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return make_problem(tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="module")
def scorer(problem):
    return ProxyEvaluator(problem)


def test_registered_entry_point_is_a_string():
    spec = gymnasium.spec(ENV_ID)
    assert spec.entry_point == "slimtune.envs.compression:CompressionEnv"


def test_check_env_passes(problem, scorer):
    env = CompressionEnv(problem=problem, scorer=scorer)
    check_env(env, skip_render_check=True)


def test_one_step_per_layer_and_reward_only_at_the_end(problem, scorer):
    env = CompressionEnv(problem=problem, scorer=scorer)
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(OBS_FEATURES),) and info["layer"] == problem.table.layers[0].name
    rewards = []
    for i in range(len(problem.table.layers)):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        rewards.append(reward)
        assert terminated == (i == len(problem.table.layers) - 1) and not truncated
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert set(info) >= {"policy", "proxy_accuracy", "measured_latency_ms", "feasible",
                         "budget_ms", "predicted_latency_ms"}
    assert info["measured_latency_ms"] > 0
    expected = info["proxy_accuracy"] - (0 if info["feasible"] else 1.0)
    assert rewards[-1] == pytest.approx(expected)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2, dtype=np.float32))


def test_wall_keeps_every_predicted_feasible_episode_feasible(problem):
    problem = replace(problem, budget_ms=0.3 * problem.baseline_ms)  # a tight budget
    rng = np.random.default_rng(0)
    predictor = problem.predictor
    start = PolicyBuilder(problem)
    assert start.floor_ms({}, {}, 0) <= problem.budget_ms  # the budget is reachable
    clipped = 0
    for _ in range(30):
        b = PolicyBuilder(problem)
        while not b.done:
            d = b.decide(b.choice_from_action(rng.uniform(-1, 1, 2)))
            clipped += d.clipped
        assert predictor.predict_ms(b.policy()) <= problem.budget_ms + 1e-9
    assert clipped > 0  # random proposals do hit the wall


def test_wall_leaves_a_feasible_proposal_alone(problem):
    b = PolicyBuilder(problem)
    while not b.done:
        d = b.decide(Choice(0.75, 8))  # the most aggressive proposal is always feasible
        assert not d.clipped


def test_wall_takes_the_most_aggressive_choice_when_nothing_fits(problem):
    impossible = replace(problem, budget_ms=1e-6)
    b = PolicyBuilder(impossible)
    while not b.done:
        b.decide(Choice(0.0, 32))
    assert all(r == 0.75 for r in b.policy().prune.values())


def test_shared_group_is_decided_once(problem):
    b = PolicyBuilder(problem)
    seen = set()
    while not b.done:
        layer = b.layers[b.step]
        ratios, _ = b.choices(layer)
        if layer.group in seen:
            assert ratios == [b.prune[layer.group]]
        if layer.group is not None:
            seen.add(layer.group)
        b.decide(Choice(0.25, 32))


def test_same_actions_give_the_same_episode(problem):
    def run(seed):
        # a fresh scorer each time: the wall's learnt correction starts from the same point
        env = CompressionEnv(problem=problem, scorer=ProxyEvaluator(problem))
        env.reset(seed=seed)
        env.action_space.seed(seed)
        total, obs_log = 0.0, []
        done = False
        while not done:
            obs, r, done, _, info = env.step(env.action_space.sample())
            obs_log.append(obs)
            total += r
        return np.stack(obs_log), info["policy"], total

    a, b = run(3), run(3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[2] == b[2]


def test_scores_are_memoised_by_policy(problem):
    scorer = ProxyEvaluator(problem)
    env = CompressionEnv(problem=problem, scorer=scorer)
    for _ in range(2):
        env.reset()
        done = False
        while not done:
            # the most aggressive action: the same policy whatever the wall learnt
            *_, done, _, info = env.step(np.array([1.0, 1.0], dtype=np.float32))
    assert scorer.evaluations == 1 and scorer.measurements == 1


def test_error_log_flops_reward(tmp_path):
    problem = make_problem(tmp_path, env={"reward": "error_log_flops"})
    env = CompressionEnv(problem=problem)
    env.reset()
    done = False
    while not done:
        *_, reward, done, _, info = env.step(np.array([-1.0, -1.0], dtype=np.float32))
    expected = -(1 - info["proxy_accuracy"]) * np.log(info["macs"])
    expected -= 0 if info["feasible"] else 1.0
    assert reward == pytest.approx(expected)


def test_works_in_sb3_vector_env(problem, scorer):
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: CompressionEnv(problem=problem, scorer=scorer)] * 2)
    obs = venv.reset()
    assert obs.shape == (2, len(OBS_FEATURES))
    for _ in range(len(problem.table.layers)):
        obs, rewards, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert dones.all() and all("proxy_accuracy" in i for i in infos)


def test_gymnasium_make_with_spec_overrides(tmp_path, monkeypatch):
    from tests.jobs import write_job

    path = write_job(tmp_path)
    # batch 16: at batch 1 this 0.08 ms model is all fixed cost, and on a 2-core AVX2 machine
    # its fastest pruned form measured as fast as itself, so no budget below it was reachable
    env = gymnasium.make(ENV_ID, job=str(path), budget={"latency_fraction": 0.9},
                         space={"prune_ratios": [0.0, 0.5]}, target={"batch_size": 16})
    inner = env.unwrapped
    assert inner.problem.spec.budget.latency_fraction == 0.9
    assert inner.problem.budget_ms == pytest.approx(0.9 * inner.problem.baseline_ms)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_reward_respects_spec_constraints(tmp_path):
    problem = make_problem(tmp_path, constraints={"ece": 1e-6})  # no real model is this calibrated
    env = CompressionEnv(problem=problem)
    env.reset()
    done = False
    while not done:
        *_, reward, done, _, info = env.step(np.array([-1.0, -1.0], dtype=np.float32))
    assert info["violations"] and "ece" in info["violations"][0]
    assert not info["feasible"] and info["metrics"]["ece"] > 1e-6
    assert reward == pytest.approx(info["proxy_accuracy"] - 1.0)


def test_wall_correction_learns_from_measurements(problem):
    scorer = ProxyEvaluator(problem)
    assert scorer.correction() == 1.0
    for ratio in (1.5, 1.6, 1.4, 9.0):
        scorer.record(10.0, 10.0 * ratio)
    assert scorer.correction() == pytest.approx(1.55)  # the median: one outlier moves little
    loose = PolicyBuilder(problem, correction=1.0)
    tight = PolicyBuilder(problem, correction=scorer.correction())
    assert tight.floor_ms({}, {}, 0) == pytest.approx(1.55 * loose.floor_ms({}, {}, 0))
