"""Remote targets: a second Ray node on 127.0.0.1 carrying ``target:edge-box``.

Slow (two Ray nodes start): run with ``pytest -m slow tests/test_remote_target.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from slimtune.errors import UserInputError
from slimtune.export import export_onnx
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.targets import (
    TargetLostError,
    check_target,
    live_targets,
    measure_on_target,
)
from slimtune.models import build_builtin

SHAPE = (1, 16, 16)
TINY = MeasureProtocol(warmup=1, rounds=2, repeats=3)
# long enough that the node is removed while it measures
LONG = MeasureProtocol(warmup=1, rounds=3, repeats=3, min_seconds_per_round=20)


class _Cluster:
    """A head started by this process plus, optionally, a ``ray start`` node carrying the
    target. Ray's temp dir is private, so no other Ray user on the machine can attach to
    it by accident (``ray.init()`` follows ``/tmp/ray/ray_current_cluster``)."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir

    def processes(self, *needles: str) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if self.temp_dir in cmd and all(n in cmd for n in needles):
                found.append(proc)
        return found

    def kill(self, procs: list[psutil.Process]) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                proc.kill()

    def remove_target_node(self) -> None:
        """Kill the target node's raylet (and its workers): the node dies."""
        raylets = self.processes("raylet", "target:edge-box")
        assert raylets, "no raylet carries the target"
        self.kill(raylets)


@contextlib.contextmanager
def ray_cluster(*, edge_box: bool) -> Iterator[_Cluster]:
    import ray

    temp_dir = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: unix socket paths
    cluster = _Cluster(temp_dir)
    from slimtune.ray_local import stop_ray

    stop_ray(force=True)  # an earlier test's local Ray, kept for the process
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=temp_dir, logging_level="ERROR", log_to_driver=False)
    try:
        if edge_box:
            gcs = ray._private.worker._global_node.gcs_address
            ray_bin = str(Path(sys.executable).with_name("ray"))
            subprocess.run([ray_bin, "start", f"--address={gcs}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=1", "--disable-usage-stats",
                            "--resources", json.dumps({"target:edge-box": 1})],
                           check=True, capture_output=True, timeout=120)
            deadline = time.monotonic() + 60
            while "edge-box" not in live_targets():
                assert time.monotonic() < deadline, "the target node did not join"
                time.sleep(0.5)
        yield cluster
    finally:
        ray.shutdown()
        cluster.kill(cluster.processes())
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_remote_target_measures_and_its_loss_fails_clearly(tmp_path: Path,
                                                             monkeypatch) -> None:
    from slimtune.measurement import targets

    monkeypatch.setattr(targets, "machine_load", lambda: 0.0)  # the cache's load rule: off
    with ray_cluster(edge_box=True) as cluster:
        torch.manual_seed(0)
        model = build_builtin("tiny_resnet", 10, 1).eval()
        path = export_onnx(model, SHAPE, tmp_path / "m.onnx")
        assert live_targets() == {"edge-box": 1.0}

        check_target("edge-box", 1)
        with pytest.raises(UserInputError, match="targets in this cluster: edge-box"):
            check_target("lab-pi", 1)
        with pytest.raises(UserInputError, match="exceeds the 1 CPUs of target 'edge-box'"):
            check_target("edge-box", 2)

        kw = dict(runtime="onnxruntime", input_shape=SHAPE, batch_size=2, threads=1,
                  protocol=TINY)
        stats = measure_on_target("edge-box", path, **kw)
        assert stats.target == "edge-box" and stats.samples == 6 and not stats.cached
        assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
        assert measure_on_target("edge-box", path, **kw).cached
        # the same model on another target is another measurement
        assert not measure_on_target("local", path, **kw).cached
        eager = measure_on_target("edge-box", model, **{**kw, "runtime": "torch"})
        assert eager.runtime == "torch" and eager.target == "edge-box"

        # the target leaves while it measures: a clear error, nothing cached
        cached_before = set((tmp_path / "cache" / "latency").glob("*.json"))
        outcome: dict[str, BaseException] = {}

        def measure_long() -> None:
            try:
                measure_on_target("edge-box", path, **{**kw, "protocol": LONG})
            except BaseException as err:  # noqa: BLE001 - inspected below
                outcome["error"] = err

        worker = threading.Thread(target=measure_long)
        worker.start()
        time.sleep(4)
        start = time.monotonic()
        cluster.remove_target_node()
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), TargetLostError), outcome
        assert "edge-box" in str(outcome["error"])
        assert time.monotonic() - start < 45
        assert set((tmp_path / "cache" / "latency").glob("*.json")) == cached_before

        deadline = time.monotonic() + 90  # until Ray's health checks mark the node dead
        while "edge-box" in live_targets() and time.monotonic() < deadline:
            time.sleep(1)
        with pytest.raises(UserInputError, match="targets in this cluster: none"):
            check_target("edge-box", 1)
        with pytest.raises(TargetLostError, match="not in the Ray cluster"):
            measure_on_target("edge-box", path, **{**kw, "batch_size": 3})


@pytest.mark.slow
def test_a_trial_on_a_lost_target_fails_and_records_no_latency(tmp_path: Path) -> None:
    from slimtune.measurement.latency import MeasureProtocol as Protocol
    from slimtune.policy import Policy
    from slimtune.spec import parse_spec
    from slimtune.trial import TrialContext, run_trial
    from slimtune.validate import check_inputs
    from tests.jobs import tiny_job

    spec = parse_spec(tiny_job(tmp_path, target={"name": "edge-box"}))
    checked = check_inputs(spec)
    ctx = TrialContext(spec=spec, table=checked.table,
                       baseline_state=checked.model.state_dict(), data=checked.data,
                       budget_ms=100.0, trials_dir=tmp_path / "trials",
                       protocol=Protocol(warmup=1, rounds=2, repeats=3))
    with ray_cluster(edge_box=False):  # no node carries the target (it left before)
        result = run_trial(ctx, 0, Policy(), "random")
    assert result.state == "failed" and result.latency_ms is None and not result.latency
    assert "TargetLostError" in (result.error or "") and "edge-box" in (result.error or "")
