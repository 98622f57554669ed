"""Shared fixtures: every test gets its own cache, lock dir and MLflow store."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMTUNE_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two threads per test run many times
    slower (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _sigchld_restored():
    """Each test leaves SIGCHLD as it found it: torch's DataLoader installs a Python
    SIGCHLD handler the first time a loader runs worker processes and keeps it for the
    process, so every later child's exit in the suite ran a handler (on the thread's
    alternate signal stack, which OpenVINO had left dangling: see
    ``slimtune.runtimes.openvino_cpu.keeping_signal_stack``)."""
    import signal

    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)
