"""Latency as a measurement: a fixed protocol, robust statistics, and a machine-wide lock.

A latency number is only meaningful with how it was taken, so `LatencyStats` carries the
spread, the per-round medians and the settings next to the median. Timing happens under an
exclusive machine lock that training phases of every slimtune process take shared, so nothing
else computes on this machine while we time. The runtimes themselves (`Runtime`, `RUNTIMES`)
live in `slimtune.runtimes`; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Literal

import numpy as np
from torch import nn

from slimtune.errors import UserInputError
from slimtune.runtimes import (  # noqa: F401 - Runtime, RUNTIMES and the classes re-exported
    RUNTIMES,
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    get_runtime,
)

LOCK_DIR_ENV = "SLIMTUNE_LOCK_DIR"
LOCK_FILE_NAME = "slimtune-machine.lock"
LockKind = Literal["shared", "exclusive"]


@dataclass(frozen=True)
class LatencyStats:
    """Per-batch latency of one model on one runtime, pooled over the kept rounds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # std / mean of all samples: how noisy the measurement was
    samples: int
    rounds: int
    runtime: str
    threads: int
    batch_size: int
    round_medians_ms: tuple[float, ...]
    rejected_rounds: int = 0  # rounds re-measured because their median was off
    target: str = "local"  # the spec's target name (slimtune.measurement.targets) that measured it
    cached: bool = False  # True: read back from the latency cache, measured earlier

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/MLflow-friendly dict (tuples become lists)."""
        out = asdict(self)
        out["round_medians_ms"] = list(self.round_medians_ms)
        return out


@dataclass(frozen=True)
class MeasureProtocol:
    """How to time: warm-up calls, then `rounds` rounds of at least `repeats` calls each.

    A round whose median differs from the median of round medians by more than
    `max_round_spread` (a fraction) is re-measured, at most `max_retries` times in all; the
    number of re-measured rounds is reported. A round also keeps going until it has lasted
    `min_seconds_per_round`, so fast models get enough samples.
    """

    warmup: int = 20
    rounds: int = 5
    repeats: int = 100
    max_round_spread: float = 0.5
    max_retries: int = 5
    min_seconds_per_round: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.rounds < 1 or self.repeats < 1 or self.max_retries < 0:
            raise UserInputError(f"invalid latency protocol: {self}")
        if self.max_round_spread <= 0 or self.min_seconds_per_round < 0:
            raise UserInputError(f"invalid latency protocol: {self}")


DEFAULT_PROTOCOL = MeasureProtocol()


class _ProcessLock:
    """This process's hold on the machine lock file: one descriptor, counts per kind.

    flock locks belong to an open file description, so nested and cross-thread uses in one
    process share the descriptor (an exclusive request inside a shared section upgrades it
    instead of deadlocking on itself); a forked child opens its own.
    """

    def __init__(self, path: Path) -> None:
        self.pid = os.getpid()
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self.counts: dict[LockKind, int] = {"shared": 0, "exclusive": 0}
        self.guard = threading.Lock()

    def mode(self) -> LockKind | None:
        if self.counts["exclusive"]:
            return "exclusive"
        return "shared" if self.counts["shared"] else None


_held: _ProcessLock | None = None
_held_guard = threading.Lock()


def lock_path() -> Path:
    """The machine lock file: `$SLIMTUNE_LOCK_DIR/slimtune-machine.lock` (default: temp dir)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir()) / LOCK_FILE_NAME


def _process_lock() -> _ProcessLock:
    global _held
    path = lock_path()
    with _held_guard:
        if _held is not None and _held.pid == os.getpid():
            if _held.path == path:
                return _held
            if _held.mode() is not None:
                raise RuntimeError(f"{LOCK_DIR_ENV} changed while the machine lock is held")
            os.close(_held.fd)
        path.parent.mkdir(parents=True, exist_ok=True)
        _held = _ProcessLock(path)
        return _held


def _flock(fd: int, kind: LockKind, timeout: float | None) -> None:
    op = fcntl.LOCK_EX if kind == "exclusive" else fcntl.LOCK_SH
    if timeout is None:
        fcntl.flock(fd, op)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"machine lock ({kind}) not acquired in {timeout}s") from None
            time.sleep(0.01)


@contextlib.contextmanager
def machine_lock(kind: LockKind, *, timeout: float | None = None) -> Iterator[None]:
    """Readers-writer lock shared by every process on this machine (flock on `lock_path()`).

    Training/fine-tuning takes it "shared" (several at once); latency measurement takes it
    "exclusive" (nothing else computes while we time). `timeout` in seconds raises
    TimeoutError instead of waiting forever.
    """
    if kind not in ("shared", "exclusive"):
        raise ValueError(f"lock kind must be 'shared' or 'exclusive', got {kind!r}")
    held = _process_lock()
    with held.guard:
        before = held.mode()
        target: LockKind = "exclusive" if "exclusive" in (kind, before) else "shared"
        if target != before:
            try:
                _flock(held.fd, target, timeout)
            except TimeoutError:
                if before is not None:  # a failed flock upgrade may have dropped the shared hold
                    _flock(held.fd, before, None)
                raise
        held.counts[kind] += 1
    try:
        yield
    finally:
        with held.guard:
            held.counts[kind] -= 1
            after = held.mode()
            if after is None:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            elif after != target:
                _flock(held.fd, after, None)


LOCK_LOG_ENV = "SLIMTUNE_LOCK_LOG"


@contextlib.contextmanager
def _lock_log(what: str) -> Iterator[None]:
    """With ``$SLIMTUNE_LOCK_LOG`` set, append ``start|end WHAT PID NS`` lines (written while
    the exclusive lock is held) so tests can check no two measurements overlapped."""
    path = os.environ.get(LOCK_LOG_ENV)
    if not path:
        yield
        return

    def line(event: str) -> None:
        with open(path, "a") as f:
            f.write(f"{event} {what} {os.getpid()} {time.time_ns()}\n")

    line("start")
    try:
        yield
    finally:
        line("end")


def _time_round(run_once: Callable[[], None], protocol: MeasureProtocol) -> list[int]:
    """Nanoseconds per call for one round."""
    samples: list[int] = []
    min_ns = protocol.min_seconds_per_round * 1e9
    start = perf_counter_ns()
    while len(samples) < protocol.repeats or perf_counter_ns() - start < min_ns:
        t0 = perf_counter_ns()
        run_once()
        samples.append(perf_counter_ns() - t0)
    return samples


def _outlier_round(rounds: list[list[int]], max_spread: float) -> int | None:
    """Index of the round whose median is furthest beyond `max_spread` of the central one."""
    medians = np.array([np.median(r) for r in rounds])
    center = float(np.median(medians))
    if center <= 0:
        return None
    deviation = np.abs(medians - center) / center
    worst = int(np.argmax(deviation))
    return worst if deviation[worst] > max_spread else None


def measure_latency(
    run_once: Callable[[], None],
    *,
    runtime: str,
    threads: int,
    batch_size: int,
    protocol: MeasureProtocol = DEFAULT_PROTOCOL,
) -> LatencyStats:
    """Time `run_once` (one forward pass) under the exclusive machine lock, per `protocol`.

    Garbage collection is paused while timing so it does not land inside a sample.
    """
    gc_was_enabled = gc.isenabled()
    with machine_lock("exclusive"), _lock_log("measure"):
        try:
            gc.disable()
            for _ in range(protocol.warmup):
                run_once()
            rounds = [_time_round(run_once, protocol) for _ in range(protocol.rounds)]
            rejected = 0
            while rejected < protocol.max_retries:
                outlier = _outlier_round(rounds, protocol.max_round_spread)
                if outlier is None:
                    break
                rounds[outlier] = _time_round(run_once, protocol)
                rejected += 1
        finally:
            if gc_was_enabled:
                gc.enable()
    ms = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds]) / 1e6
    mean = float(ms.mean())
    return LatencyStats(
        median_ms=float(np.median(ms)),
        p10_ms=float(np.percentile(ms, 10)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=mean,
        cv=float(ms.std() / mean) if mean > 0 else 0.0,
        samples=int(ms.size),
        rounds=len(rounds),
        runtime=runtime,
        threads=threads,
        batch_size=batch_size,
        round_medians_ms=tuple(float(np.median(r)) / 1e6 for r in rounds),
        rejected_rounds=rejected,
    )


def measure_model(
    model_or_path: Path | nn.Module,
    runtime: str,
    input_shape: tuple[int, ...],
    batch_size: int,
    threads: int,
    protocol: MeasureProtocol = DEFAULT_PROTOCOL,
) -> LatencyStats:
    """Prepare `model_or_path` on the runtime registered as `runtime` and measure it."""
    backend = get_runtime(runtime)
    with backend.context(threads):
        run_once = backend.prepare(model_or_path, input_shape, batch_size, threads)
        return measure_latency(
            run_once, runtime=runtime, threads=threads, batch_size=batch_size, protocol=protocol
        )
