"""One local Ray per process: kept between jobs, its workers following the driver's env."""

from __future__ import annotations

import os

from slimtune.ray_local import adopt_env, driver_env, start_ray, stop_ray


def test_adopt_env_takes_the_drivers_variables_and_drops_stale_ones(monkeypatch) -> None:
    monkeypatch.setenv("SLIMTUNE_CACHE", "/first")
    monkeypatch.setenv("SLIMTUNE_LATENCY_CACHE", "0")  # set by an earlier job in this worker
    monkeypatch.setenv("PATH_UNRELATED", "kept")
    adopt_env({"SLIMTUNE_CACHE": "/second", "MLFLOW_TRACKING_URI": "sqlite:///x.db"})
    assert os.environ["SLIMTUNE_CACHE"] == "/second"
    assert "SLIMTUNE_LATENCY_CACHE" not in os.environ
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    assert os.environ["PATH_UNRELATED"] == "kept"
    before = dict(os.environ)
    adopt_env(None)  # a cluster's workers keep their own environment
    assert dict(os.environ) == before


def test_a_local_ray_is_kept_for_the_next_job_and_its_workers_follow(monkeypatch,
                                                                      tmp_path) -> None:
    import ray

    start_ray(num_cpus=1)
    node = ray.get_runtime_context().get_node_id()
    stop_ray()  # the end of a job: the local Ray stays
    assert ray.is_initialized()
    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path / "second-job"))
    start_ray(num_cpus=1)
    assert ray.get_runtime_context().get_node_id() == node

    @ray.remote(num_cpus=0)
    def cache_dir(env):
        adopt_env(env)
        return os.environ.get("SLIMTUNE_CACHE")

    assert ray.get(cache_dir.remote(driver_env())) == str(tmp_path / "second-job")
