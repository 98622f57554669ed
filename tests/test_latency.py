"""Latency protocol, statistics, runtimes and the machine-wide readers-writer lock.

conftest.py points SLIMTUNE_LOCK_DIR at a per-test directory, so no test waits on real runs.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import slimtune.measurement.latency as latency
from slimtune.errors import UserInputError
from slimtune.export import export_onnx
from slimtune.measurement.latency import (
    RUNTIMES,
    LatencyStats,
    MeasureProtocol,
    Runtime,
    machine_lock,
    measure_latency,
    measure_model,
)

INPUT_SHAPE = (1, 16, 16)
TINY = MeasureProtocol(warmup=2, rounds=2, repeats=5)


class TinyNet(nn.Module):
    """Conv-BN, a residual conv and a Linear head; records the torch threads it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.seen_threads: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_threads.add(torch.get_num_threads())
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class FakeClock:
    """A perf_counter_ns stand-in: time only moves when the fake model runs."""

    def __init__(self, durations_ms: Callable[[int], float]) -> None:
        self.now = 0
        self.calls = 0
        self.durations_ms = durations_ms

    def __call__(self) -> int:
        return self.now

    def run_once(self) -> None:
        self.now += int(self.durations_ms(self.calls) * 1e6)
        self.calls += 1


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeClock]]:
    def install(durations_ms: Callable[[int], float]) -> FakeClock:
        clock = FakeClock(durations_ms)
        monkeypatch.setattr(latency, "perf_counter_ns", clock)
        return clock

    yield install


def _busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_stats_of_a_known_busy_wait_are_consistent() -> None:
    protocol = MeasureProtocol(warmup=3, rounds=3, repeats=20)
    stats = measure_latency(
        lambda: _busy_wait(0.0002), runtime="fake", threads=1, batch_size=4, protocol=protocol
    )
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert 0.2 <= stats.median_ms < 5.0  # loose: the machine is shared
    assert stats.samples == 60 and stats.rounds == 3 and len(stats.round_medians_ms) == 3
    assert stats.cv >= 0 and stats.mean_ms > 0
    assert (stats.runtime, stats.threads, stats.batch_size) == ("fake", 1, 4)
    as_dict = json.loads(json.dumps(stats.to_dict()))
    assert LatencyStats(**{**as_dict, "round_medians_ms": tuple(as_dict["round_medians_ms"])}) == (
        stats
    )


def test_a_slow_round_is_re_measured(fake_clock: Callable[..., FakeClock]) -> None:
    # 2 warm-up calls, then rounds of 4 calls: round 1 (calls 6-9) is 5x slower.
    clock = fake_clock(lambda call: 5.0 if 6 <= call < 10 else 1.0)
    protocol = MeasureProtocol(warmup=2, rounds=3, repeats=4, max_round_spread=0.5)
    stats = measure_latency(
        clock.run_once, runtime="fake", threads=1, batch_size=1, protocol=protocol
    )
    assert stats.rejected_rounds == 1
    assert stats.round_medians_ms == (1.0, 1.0, 1.0)
    assert stats.median_ms == stats.p90_ms == 1.0 and stats.cv == 0.0
    assert stats.samples == 12 and clock.calls == 2 + 4 * 4


def test_re_measuring_is_bounded(fake_clock: Callable[..., FakeClock]) -> None:
    # Everything after the first two rounds is slow, so the third round never fits.
    clock = fake_clock(lambda call: 1.0 if call < 8 else 5.0)
    protocol = MeasureProtocol(warmup=0, rounds=3, repeats=4, max_retries=2)
    stats = measure_latency(
        clock.run_once, runtime="fake", threads=1, batch_size=1, protocol=protocol
    )
    assert stats.rejected_rounds == 2
    assert stats.round_medians_ms == (1.0, 1.0, 5.0)
    assert stats.samples == 12 and clock.calls == 4 * 5
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms and stats.cv > 0


def test_rounds_last_at_least_min_seconds(fake_clock: Callable[..., FakeClock]) -> None:
    clock = fake_clock(lambda call: 1.0)
    protocol = MeasureProtocol(warmup=0, rounds=2, repeats=2, min_seconds_per_round=0.01)
    stats = measure_latency(
        clock.run_once, runtime="fake", threads=1, batch_size=1, protocol=protocol
    )
    assert stats.samples == 20


def test_protocol_is_validated() -> None:
    with pytest.raises(UserInputError):
        MeasureProtocol(rounds=0)
    with pytest.raises(UserInputError):
        MeasureProtocol(max_round_spread=0)


def _child_try_lock(kind: str) -> None:
    try:
        with machine_lock(kind, timeout=0.2):  # type: ignore[arg-type]
            pass
    except TimeoutError:
        raise SystemExit(3) from None


def _other_process_gets(kind: str) -> bool:
    """Whether a separate process can take the machine lock as `kind` right now."""
    process = multiprocessing.get_context("fork").Process(target=_child_try_lock, args=(kind,))
    process.start()
    process.join(timeout=20)
    assert process.exitcode in (0, 3), process.exitcode
    return process.exitcode == 0


def test_exclusive_excludes_everyone_else() -> None:
    with machine_lock("exclusive"):
        assert not _other_process_gets("shared")
        assert not _other_process_gets("exclusive")
    assert _other_process_gets("exclusive")


def test_shared_admits_shared_but_not_exclusive() -> None:
    with machine_lock("shared"):
        assert _other_process_gets("shared")
        assert not _other_process_gets("exclusive")


def test_exclusive_inside_shared_upgrades_then_restores() -> None:
    with machine_lock("shared"):
        with machine_lock("exclusive", timeout=5):  # no self-deadlock
            assert not _other_process_gets("shared")
        assert _other_process_gets("shared")
        assert not _other_process_gets("exclusive")


def _child_hold(kind: str, ready: multiprocessing.synchronize.Event) -> None:
    with machine_lock(kind):  # type: ignore[arg-type]
        ready.set()
        time.sleep(30)


@contextlib.contextmanager
def _held_elsewhere(kind: str) -> Iterator[None]:
    """Another process holds the machine lock as `kind` meanwhile."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    process = ctx.Process(target=_child_hold, args=(kind, ready))
    process.start()
    try:
        assert ready.wait(timeout=20)
        yield
    finally:
        process.kill()
        process.join()


def test_timeout_raises_and_a_failed_upgrade_keeps_the_shared_hold() -> None:
    with _held_elsewhere("exclusive"), pytest.raises(TimeoutError):
        with machine_lock("shared", timeout=0.05):
            pass
    with machine_lock("shared"):
        with _held_elsewhere("shared"), pytest.raises(TimeoutError):
            with machine_lock("exclusive", timeout=0.05):
                pass
        assert not _other_process_gets("exclusive")
    assert _other_process_gets("exclusive")


def test_measure_latency_holds_the_exclusive_lock() -> None:
    seen: list[bool] = []

    def run_once() -> None:
        if not seen:
            seen.append(_other_process_gets("shared"))

    measure_latency(run_once, runtime="fake", threads=1, batch_size=1, protocol=TINY)
    assert seen == [False]
    assert _other_process_gets("exclusive")


def test_torch_runtime_sets_and_restores_threads() -> None:
    net = TinyNet()
    torch.set_num_threads(1)
    stats = measure_model(net, "torch", INPUT_SHAPE, batch_size=3, threads=2, protocol=TINY)
    assert net.seen_threads == {2}
    assert torch.get_num_threads() == 1
    assert stats.runtime == "torch" and stats.samples == 10 and stats.median_ms > 0


def test_onnxruntime_runtime_measures_an_onnx_file(tmp_path: Path) -> None:
    path = export_onnx(TinyNet(), INPUT_SHAPE, tmp_path / "net.onnx")
    stats = measure_model(path, "onnxruntime", INPUT_SHAPE, batch_size=3, threads=1, protocol=TINY)
    assert (stats.runtime, stats.threads, stats.batch_size) == ("onnxruntime", 1, 3)
    assert stats.samples == 10 and stats.median_ms > 0


def test_runtimes_reject_the_wrong_model_kind(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        measure_model(tmp_path / "x.onnx", "torch", INPUT_SHAPE, 1, 1, TINY)
    with pytest.raises(UserInputError):
        measure_model(TinyNet(), "onnxruntime", INPUT_SHAPE, 1, 1, TINY)
    with pytest.raises(UserInputError, match="unknown runtime"):
        measure_model(TinyNet(), "tpu", INPUT_SHAPE, 1, 1, TINY)


class CountingRuntime(Runtime):
    """A user plug-in: runs nothing, counts calls."""

    name = "counting"
    calls = 0

    def prepare(
        self, model: Path | nn.Module, input_shape: tuple[int, ...], batch_size: int, threads: int
    ) -> Callable[[], None]:
        def run_once() -> None:
            CountingRuntime.calls += 1

        return run_once


def test_a_registered_plug_in_runtime_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RUNTIMES, CountingRuntime.name, CountingRuntime)
    stats = measure_model(Path("m.bin"), "counting", INPUT_SHAPE, 1, 1, TINY)
    assert stats.runtime == "counting" and CountingRuntime.calls == 2 + 10
