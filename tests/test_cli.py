"""Bad input: one line on stderr, exit 2, before compute; nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from slimtune.cli import main
from tests.jobs import write_job


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_clean_failure(code: int, err: str, tmp_path, expected: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("slimtune: error: ")
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize("overrides, expected", [
    ({"extra_key": 1}, "extra_key: unknown key"),
    ({"budget": {"latency_ms": -1.0}}, "budget.latency_ms"),
    ({"model": {"arch": "resnet9000"}}, "resnet9000"),
    ({"model": {"import": "no_such_pkg.mod:make"}}, "no_such_pkg"),
    ({"model": {"import": "not-a-path"}}, "not-a-path"),
    ({"search": {"searcher": "grid"}}, "search.searcher"),
])
def test_bad_spec_exit_2(capsys, tmp_path, overrides, expected):
    job = write_job(tmp_path, **overrides)
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, expected)


def test_missing_and_malformed_spec(capsys, tmp_path):
    code, err = run_cli(capsys, "run", tmp_path / "none.yaml", "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, "no such job spec file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {arch: [\n")
    code, err = run_cli(capsys, "run", bad, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, "not valid YAML")


def test_weights_that_do_not_fit(capsys, tmp_path):
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    job = write_job(tmp_path, model={"arch": "tiny_resnet", "weights": "w.pt"})
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, "weights do not fit")


def test_missing_dataset_names_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    job = write_job(tmp_path, data={"dataset": "fashion-mnist"})
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, "apt-get install -y dataset-fashion-mnist")


def test_impossible_budget_names_both_numbers(capsys, tmp_path):
    job = write_job(tmp_path, budget={"latency_ms": 1e-6})
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path, "below the fastest model")
    assert "0.000 ms" in err and "baseline measures" in err


def test_given_policies_are_not_refused_by_the_space_fastest_model(tmp_path):
    """apply's preflight (reachable=False) measures the bounds but refuses nothing: the
    agent's policy, already timed, is judged by its own measurement."""
    from slimtune.preflight import preflight
    from slimtune.spec import load_spec

    spec = load_spec(write_job(tmp_path, budget={"latency_ms": 1e-6}))
    prep = preflight(spec, reachable=False, say=lambda _line: None)
    assert prep.baseline_ms > 0 and prep.fastest_ms > 0
    assert prep.fastest_ms > spec.budget.latency_ms  # what reachable=True refuses


def test_bad_overrides(capsys, tmp_path):
    job = write_job(tmp_path)
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out", "--trials", "0")
    assert_clean_failure(code, err, tmp_path, "--trials")
    code, err = run_cli(capsys, "run", job, "--out", tmp_path / "out", "--searcher", "grid")
    assert_clean_failure(code, err, tmp_path, "search.searcher")


def test_non_empty_out_dir_refused(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    job = write_job(tmp_path)
    assert main(["run", str(job), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["run", str(job), "--out", str(out), "--overwrite"]) == 2
    assert "not a slimtune output directory" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "mlruns.db").exists()


def test_validate(capsys, tmp_path):
    assert main(["validate", str(write_job(tmp_path))]) == 0
    assert capsys.readouterr().out.startswith("ok: tiny: tiny_resnet")
    code, err = run_cli(capsys, "validate", write_job(tmp_path, "b.yaml", data={"x": 1}))
    assert code == 2 and "data.x: unknown key" in err


def test_export_errors(capsys, tmp_path):
    code, err = run_cli(capsys, "export", tmp_path, "--trial", "0", "--out", tmp_path / "e")
    assert code == 2 and "no pareto.json" not in err and "not a slimtune output" in err


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slimtune.cli", "run", str(tmp_path / "x.yaml"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such job spec file" in proc.stderr
