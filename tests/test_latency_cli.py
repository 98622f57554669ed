"""``slimtune latency``: the figures on the job's target, and one line + exit 2 on bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slimtune.cli import main
from slimtune.policy import Policy
from tests.jobs import write_job

CONTRACT_KEYS = {"median_ms", "p10_ms", "p90_ms", "cv", "samples", "runtime", "threads",
                 "batch_size"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["latency", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """The cache keeps figures only from a quiet machine; CI machines are busy."""
    from slimtune.measurement import targets

    monkeypatch.setattr(targets, "machine_load", lambda: 0.0)


def test_json_prints_one_object_with_the_contract_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path, target={"batch_size": 2})
    code, out, _ = _run(capsys, str(job), "--json")
    assert code == 0
    data = json.loads(out)  # exactly one JSON document on stdout
    assert out.strip().count("\n") == 0
    assert CONTRACT_KEYS <= set(data)
    assert (data["runtime"], data["threads"], data["batch_size"]) == ("onnxruntime", 1, 2)
    assert data["p10_ms"] <= data["median_ms"] <= data["p90_ms"]
    assert data["samples"] >= 500 and data["target"] == "local" and data["cached"] is False
    assert data["subject"] == "baseline" and data["int8_layers"] == 0
    # a second run reads the figure back instead of measuring again
    code, out, _ = _run(capsys, str(job), "--json")
    again = json.loads(out)
    assert again["cached"] is True and again["median_ms"] == data["median_ms"]


def test_a_policy_is_measured_and_the_text_lists_the_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path, target={"runtime": "torch"})
    policy = Policy(prune={"conv1": 0.5}, bits={"layer1.conv1": 8})
    policy.save(tmp_path / "policy.json")
    code, out, _ = _run(capsys, str(job), "--policy", str(tmp_path / "policy.json"))
    assert code == 0
    assert "median" in out and "p10" in out and "p90" in out and "cv" in out
    assert "torch" in out and "samples" in out
    code, out, _ = _run(capsys, str(job), "--policy", str(tmp_path / "policy.json"), "--json")
    data = json.loads(out)
    base_code, base_out, _ = _run(capsys, str(job), "--json")
    assert data["macs"] < json.loads(base_out)["macs"]  # the pruned model was measured


@pytest.mark.parametrize("content, message", [
    (None, "no such policy file"),
    ("{not json", "not a valid policy file"),
    ('{"prune": {"conv1": 2.0}}', "not a valid policy file"),
    ('{"prune": {"nope": 0.5}}', "unknown channel groups"),
    ('{"prune": {}, "model_signature": "0123456789ab"}', "made for model"),
])
def test_bad_policy_files_give_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
        message: str) -> None:
    job = write_job(tmp_path)
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    code, out, err = _run(capsys, str(job), "--policy", str(path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("target, message", [
    ({"threads": 64}, "target.threads 64 exceeds the"),
    ({"runtime": "tflite"}, "target.runtime"),
    ({"name": "edge box"}, "target.name"),
    ({"name": "edge-box"}, "is a Ray node"),
])
def test_bad_targets_give_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], target: dict,
        message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    job = write_job(tmp_path, target=target)
    code, out, err = _run(capsys, str(job))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_threads_are_checked_against_the_cores(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cores = os.cpu_count() or 1
    job = write_job(tmp_path, target={"threads": cores + 1})
    code, _, err = _run(capsys, str(job))
    assert code == 2 and f"exceeds the {cores} cores here" in err
    code, _, err = main(["validate", str(job)]), None, capsys.readouterr().err
    assert code == 2 and "exceeds" in err


def test_policies_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, str(write_job(tmp_path)), "--predictor-report",
                        "--policies", "0")
    assert code == 2 and "--policies" in err
