"""PPO on the supernet: episodes scored by the job's evaluator, latency sampled."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.envs.compression import CompressionEnv
from slimtune.envs.proxy import ProxyEvaluator
from slimtune.evaluators.supernet import SupernetEvaluator
from slimtune.spec import parse_spec
from tests.envs_helpers import make_problem
from tests.jobs import tiny_job


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return make_problem(tmp_path_factory.mktemp("env-supernet"),
                        search={"evaluator": "supernet"}, supernet={"steps": 4},
                        env={"proxy_val_size": 64, "recal_batches": 2})


def _episode(env: CompressionEnv, rng: np.random.Generator) -> dict:
    env.reset(seed=int(rng.integers(1 << 30)))
    info: dict = {}
    done = False
    while not done:
        _, _, done, _, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
    return info


def test_the_supernet_scores_episodes_and_one_in_twenty_is_measured(problem):
    assert isinstance(problem.evaluator, SupernetEvaluator)
    assert problem.evaluator.val_size == 64  # the env's own sizes, not the scoring search's
    scorer = ProxyEvaluator(problem)
    assert scorer.measure_every == 20
    env = CompressionEnv(problem=problem, scorer=scorer)
    rng = np.random.default_rng(0)
    infos = [_episode(env, rng) for _ in range(24)]
    for info in infos:
        assert info["proxy_accuracy"] == problem.evaluator.score(info["policy"])
        if info["latency_source"] == "measured":
            assert info["measured_latency_ms"] == info["latency_ms"] > 0
        else:
            assert info["measured_latency_ms"] is None and info["latency"] == {}
            assert info["latency_ms"] == pytest.approx(
                info["predicted_latency_ms"] * info["wall_correction"], rel=0.5)
    new = len({i["policy"].key() for i in infos})
    assert scorer.measurements == len(range(0, new, 20))  # the first new one, then every 20th
    assert infos[0]["latency_source"] == "measured"
    assert scorer.evaluations == new  # no proxy fine-tune: one supernet score a policy


def test_forced_measurement_and_a_proxy_spec_measures_every_episode(problem, tmp_path):
    scorer = ProxyEvaluator(problem)
    env = CompressionEnv(problem=problem, scorer=scorer)
    policy = env.propose(lambda obs: np.zeros(2, dtype=np.float32))
    _, end = env.score(policy, measure=True)
    assert end["latency_source"] == "measured" and scorer.measurements == 1
    spec = parse_spec(tiny_job(tmp_path))
    assert spec.env.scorer(spec.search.evaluator) == "proxy"
    assert spec.env.measure_period(spec.search.evaluator) == 1


def test_env_supernet_with_a_space_it_cannot_score_is_one_spec_line(tmp_path):
    with pytest.raises(ValueError, match="env.evaluator supernet scores prune ratios"):
        parse_spec(tiny_job(tmp_path, env={"evaluator": "supernet"},
                            space={"sparsity": [0.5]}))
