"""The printed MLflow links, opened in headless Chromium against a real ``mlflow ui``.

Slow (the UI takes ~20 s to start, each page ~15 s of virtual time): ``-m slow``. Needs
Debian's ``chromium`` (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.front_helpers import published_job

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dom(url: str) -> str:
    """The page after its scripts ran (15 s of virtual time)."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=15000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_printed_links_open_the_front_in_the_mlflow_ui(tmp_path):
    out, spec, tracker, parent, results, front, best, links = published_job(tmp_path)
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "ui", "--backend-store-uri", spec.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow ui did not start in 120 s")

        def here(url: str) -> str:
            return url.replace("http://127.0.0.1:5000", base)

        page = _dom(here(links.front_url))
        for r in results:  # the front's runs and only them, in the Model training view
            assert (f">trial-{r.trial_id}<" in page) == (r in front), r.trial_id
        assert f"<strong>{len(front)}</strong> matching runs" in page
        table = _dom(here(links.table_url))
        assert "View as table" in table and "pareto_front.json" in table
        assert f"{front[0].accuracy}" in table
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(importlib.util.find_spec("optuna_dashboard") is None,
                    reason="optuna-dashboard (extra 'dashboard') is not installed")
def test_dashboard_serves_the_study_on_localhost_only(tmp_path):
    import optuna

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}",
                                study_name="tiny-abc", directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("prune.g", 0, 0.5), t.suggest_int("bits.a", 8, 32)),
                   n_trials=4)
    port = _free_port()
    slimtune = Path(sys.executable).with_name("slimtune")
    server = subprocess.Popen([str(slimtune), "dashboard", str(tmp_path), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(60):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                              timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("slimtune dashboard did not answer in 30 s")
        assert "tiny-abc" in page
        if shutil.which("ss"):  # bound to the loopback address only
            listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"],
                                       capture_output=True, text=True).stdout
            assert listening.split()[3] == f"127.0.0.1:{port}", listening
    finally:
        server.terminate()
        server.wait(timeout=30)
