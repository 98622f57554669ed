"""``slimtune run``'s exit status: a job whose every trial failed is not a success."""

from __future__ import annotations

import pytest

import slimtune.job
from slimtune.cli import main
from slimtune.job import JobOutcome
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.results.summary import failure_line
from tests.jobs import write_job

BASE = {"accuracy": 0.9, "test_accuracy": 0.9, "latency_ms": 1.0, "size_bytes": 1000,
        "macs": 10, "params": 10}


def _outcome(tmp_path, results: list[TrialResult]) -> JobOutcome:
    return JobOutcome(tmp_path, results, [], None, BASE, 1.0, 0.0, "sqlite:///x.db", "run",
                      1.0, 1.0, 1.0)


def _failed(i: int, error: str = "RuntimeError: boom", **kw) -> TrialResult:
    return TrialResult(trial_id=i, policy=Policy(), state="failed", error=error, **kw)


def test_every_trial_failed_is_one_line_naming_the_first_error(tmp_path) -> None:
    line = failure_line(_outcome(tmp_path, [_failed(0, "PolicyError: cannot prune\n  x"),
                                            _failed(1)]))
    assert line is not None and "\n" not in line
    assert line.startswith("all 2 trials failed (first error: PolicyError: cannot prune x)")
    assert "trials.jsonl" in line


def test_one_trial_that_ran_is_a_success_even_over_budget(tmp_path) -> None:
    over = TrialResult(trial_id=1, policy=Policy(), state="infeasible", latency_ms=2.0)
    assert failure_line(_outcome(tmp_path, [_failed(0), over])) is None


def test_references_alone_do_not_make_a_failed_search_a_success(tmp_path) -> None:
    reference = TrialResult(trial_id=9, policy=Policy(), state="ok", accuracy=0.9,
                            reference="int8")
    assert failure_line(_outcome(tmp_path, [_failed(0), reference])) is not None


@pytest.mark.parametrize("states, code", [(["failed", "failed"], 1), (["failed", "ok"], 0)])
def test_run_exits_non_zero_when_every_trial_failed(tmp_path, monkeypatch, capsys,
                                                    states, code) -> None:
    results = [_failed(i) if s == "failed" else
               TrialResult(trial_id=i, policy=Policy(), state=s, accuracy=0.5,
                           test_accuracy=0.5, latency_ms=0.5)
               for i, s in enumerate(states)]
    monkeypatch.setattr(slimtune.job, "run_job",
                        lambda spec, out, **kw: _outcome(out, results))
    job = write_job(tmp_path)
    assert main(["run", str(job), "--out", str(tmp_path / "out")]) == code
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    if code:
        assert err == [f"slimtune: error: {failure_line(_outcome(tmp_path / 'out', results))}"]
    else:
        assert err == []


@pytest.mark.parametrize("state, code", [("failed", 1), ("ok", 0)])
def test_apply_exits_non_zero_when_the_agents_policy_failed(tmp_path, monkeypatch, capsys,
                                                            state, code) -> None:
    """The agent, its env and the job are stand-ins: what is tested is the exit status."""
    from types import SimpleNamespace

    import slimtune.agents
    import slimtune.agents.agent
    import slimtune.agents.transfer
    import slimtune.envs.compression
    import slimtune.envs.problem
    import slimtune.trial

    row = _failed(0) if state == "failed" else TrialResult(
        trial_id=0, policy=Policy(), state="ok", accuracy=0.5, test_accuracy=0.5,
        latency_ms=0.5)
    problem = SimpleNamespace(predictor=None, table=SimpleNamespace(layers=[]), budget_ms=1.0,
                              space=SimpleNamespace(restrict=lambda p: (p, False)))
    agent = SimpleNamespace(card=SimpleNamespace(trained_on={"model": "tiny_resnet"}))
    monkeypatch.setattr(slimtune.agents.agent.CompressionAgent, "load", lambda path: agent)
    monkeypatch.setattr(slimtune.envs.problem, "prepare_problem", lambda spec, say: problem)
    monkeypatch.setattr(slimtune.envs.compression, "CompressionEnv",
                        lambda problem: SimpleNamespace(builder=SimpleNamespace(decisions=[])))
    monkeypatch.setattr(slimtune.agents, "propose_measured", lambda agent, env: (Policy(), []))
    monkeypatch.setattr(slimtune.agents.transfer, "left_out_note", lambda space: [])
    monkeypatch.setattr(slimtune.trial, "save_layer_table", lambda out, table: None)

    def run_job(spec, out, **kw):
        out.mkdir(parents=True, exist_ok=True)
        return _outcome(out, [row])

    monkeypatch.setattr(slimtune.job, "run_job", run_job)
    out = tmp_path / "out"
    job = write_job(tmp_path)
    assert main(["apply", "--agent", str(tmp_path / "agent.zip"), str(job),
                 "--out", str(out)]) == code
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == ([f"slimtune: error: {failure_line(_outcome(out, [row]))}"] if code else [])
